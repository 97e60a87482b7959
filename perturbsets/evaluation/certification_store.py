"""Resumable certification: CERTIFY the test inputs one at a time into a store that survives interruption.

A :class:`CertificateStore` keeps every certificate as soon as it is computed, so an
interrupted run continues where it stopped and writes exactly what an uninterrupted run
would have (each input's noise is seeded by (seed, input index) alone). The store records
the settings its certificates depend on and refuses to resume with different ones. Two
formats: :class:`ExampleTableStore`, one TSV row per classified input, and
:class:`PixelMapStore`, one ``.npz`` of per-pixel maps per segmented image (Appendix F.3,
Figure 17).

Certification can be split into shards run anywhere (``Shard(i, k)`` takes every k-th
input from the i-th): each shard writes its own store, and :func:`merge_shards` combines
the k stores into the one an unsharded run would have written, row for row, refusing
shards of different runs or settings and naming any missing one.
"""

from __future__ import annotations

import json
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from perturbsets._util.checkpoint import state_dict_sha256
from perturbsets._util.io import atomic_path, write_json, write_text
from perturbsets._util.seeding import Stream, seeded_generator
from perturbsets.certify.smoothed import SmoothedClassifier
from perturbsets.classifiers.scoring import IGNORE_INDEX
from perturbsets.config.io import to_dict
from perturbsets.config.robust import RobustConfig
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.training.robust import require_labels

CERT_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
CERT_DTYPE = [("idx", int), ("label", int), ("predict", int), ("radius", float), ("correct", int), ("time", float)]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the inputs at positions index, index + count, … of the certified ones."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ValueError(f"a shard is i/k with 0 <= i < k, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/k"`` → Shard(i, k); e.g. ``--shard 0/4`` … ``--shard 3/4`` cover every input once."""
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise ValueError(f"a shard is written i/k (e.g. 0/4), got {text!r}") from None
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, position: int) -> bool:
        return position % self.count == self.index

    def location(self, base: Path) -> Path:
        """Where this shard's store lives beside the unsharded one: ``certify.tsv`` → ``certify.shard-0-of-4.tsv``."""
        return base.with_name(f"{base.stem}.shard-{self.index}-of-{self.count}{base.suffix}")


def certificate_fingerprint(model: nn.Module, pset: PerturbationSet, config: RobustConfig, sigma: float) -> dict[str, Any]:
    """What saved certificates depend on: they may only be reused by a run that would write the same ones."""
    cc = config.evaluation.certify
    assert cc is not None
    return {
        "model_sha256": state_dict_sha256(model),
        "perturbation_set_sha256": pset.weights_sha256(),
        "sigma": sigma,
        "n0": cc.n0,
        "n": cc.n,
        "alpha": cc.alpha,
        "correction": cc.correction,
        "tau": cc.tau,
        "batch_size": cc.batch_size,
        "seed": config.seed,
        "test_data": to_dict(config.evaluation.test or config.data),
    }


class CertificateStore(ABC):
    """Certificates saved as they come, keyed by test-input index.

    ``open`` starts the store or resumes it (refusing other settings); ``has`` says whether an
    input is certified already; ``add`` keeps one certificate, ``flush`` makes the added ones
    durable; ``results`` gives (radius, correct) over the scored outputs. ``count_key`` names
    what ``results`` counts in a report.
    """

    count_key: str

    def __init__(self, location: str | Path) -> None:
        self.location = Path(location)

    @property
    @abstractmethod
    def stamp(self) -> Path:
        """The file recording the settings of the stored certificates."""

    def open(self, fingerprint: dict[str, Any]) -> None:
        if self.exists():
            previous = json.loads(self.stamp.read_text()) if self.stamp.is_file() else None
            if previous != fingerprint:
                raise ValueError(
                    f"{self.location} holds certificates of another model or other settings ({self.stamp.name} differs); "
                    "delete it to start afresh, or write to another --out"
                )
            self.recover()
        else:
            self.create(fingerprint)

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def create(self, fingerprint: dict[str, Any]) -> None: ...

    def recover(self) -> None:
        """Repair what an interrupted run may have left half-written."""

    @abstractmethod
    def has(self, idx: int) -> bool: ...

    @abstractmethod
    def add(self, idx: int, label: Tensor, certificate: Any, seconds: float) -> None: ...

    def flush(self) -> None:
        """Make the certificates added so far durable."""

    @abstractmethod
    def results(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(radius, correct) of the certified outputs; ``indices`` are the inputs this run asked for."""


    @abstractmethod
    def absorb(self, other: "CertificateStore") -> None:
        """Take over the certificates of ``other`` (a shard of the same settings) that this store lacks."""


class ExampleTableStore(CertificateStore):
    """One TSV row per input (:data:`CERT_COLUMNS`), appended once per batch; settings in ``<name>.json``.

    ``results`` covers every row of the table, rows of an earlier, larger run included.
    """

    count_key = "certified"

    def __init__(self, location: str | Path) -> None:
        super().__init__(location)
        self.done: set[int] = set()
        self.pending: list[str] = []

    @property
    def stamp(self) -> Path:
        return self.location.with_suffix(".json")

    def exists(self) -> bool:
        return self.location.is_file()

    def create(self, fingerprint: dict[str, Any]) -> None:
        write_json(self.stamp, fingerprint)
        write_text(self.location, "\t".join(CERT_COLUMNS) + "\n")

    def recover(self) -> None:
        self.drop_partial_rows()
        self.done = {int(row["idx"]) for row in read_certificates(self.location)}

    def drop_partial_rows(self) -> None:
        """Keep only complete rows: a run killed while appending may leave a cut-off last line."""
        lines = self.location.read_text().split("\n")
        # The last element is '' when the file ends with a newline, else an unfinished row.
        good = [line for line in lines[1:-1] if parse_row(line) is not None]
        if len(good) != len(lines) - 2 or lines[-1] or lines[0] != "\t".join(CERT_COLUMNS):
            write_text(self.location, "\n".join(["\t".join(CERT_COLUMNS), *good]) + "\n")

    def has(self, idx: int) -> bool:
        return idx in self.done

    def add(self, idx: int, label: Tensor, certificate: Any, seconds: float) -> None:
        pred, rad, label = int(certificate.prediction[0]), float(certificate.radius[0]), int(label)
        self.pending.append(f"{idx}\t{label}\t{pred}\t{rad:.6g}\t{int(pred == label)}\t{seconds:.4g}\n")
        self.done.add(idx)

    def flush(self) -> None:
        with self.location.open("a") as f:
            f.write("".join(self.pending))
        self.pending = []

    def results(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        table = read_certificates(self.location)
        return table["radius"], table["correct"] == 1

    def absorb(self, other: CertificateStore) -> None:
        rows = read_certificates(self.location)
        rows = np.concatenate([rows, read_certificates(other.location)])
        _, first = np.unique(rows["idx"], return_index=True)
        rows = rows[first]  # sorted by input index, one row per input
        lines = [f"{r['idx']}\t{r['label']}\t{r['predict']}\t{r['radius']:.6g}\t{r['correct']}\t{r['time']:.4g}\n" for r in rows]
        write_text(self.location, "\t".join(CERT_COLUMNS) + "\n" + "".join(lines))


class PixelMapStore(CertificateStore):
    """One ``<idx>.npz`` per image in a folder, written as soon as it is computed; settings in ``fingerprint.json``.

    Each file holds ``prediction`` (int16, -1 for abstentions), ``radius`` (float32) and
    ``label`` (int16). ``results`` covers the scored pixels of the images this run asked for.
    """

    count_key = "certified_pixels"

    @property
    def stamp(self) -> Path:
        return self.location / "fingerprint.json"

    def exists(self) -> bool:
        return self.stamp.is_file()

    def create(self, fingerprint: dict[str, Any]) -> None:
        write_json(self.stamp, fingerprint)

    def path(self, idx: int) -> Path:
        return self.location / f"{idx:06d}.npz"

    def has(self, idx: int) -> bool:
        return self.path(idx).is_file()

    def add(self, idx: int, label: Tensor, certificate: Any, seconds: float) -> None:
        with atomic_path(self.path(idx)) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                prediction=certificate.prediction[0].numpy().astype(np.int16),
                radius=certificate.radius[0].numpy().astype(np.float32),
                label=label.cpu().numpy().astype(np.int16),
            )

    def absorb(self, other: CertificateStore) -> None:
        assert isinstance(other, PixelMapStore)
        for source in sorted(other.location.glob("[0-9]*.npz")):
            if not (self.location / source.name).is_file():
                with atomic_path(self.location / source.name) as tmp:
                    shutil.copyfile(source, tmp)

    def results(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        radii, correct = [], []
        for idx in indices:
            with np.load(self.path(idx), allow_pickle=False) as maps:
                scored = maps["label"] != IGNORE_INDEX
                radii.append(maps["radius"][scored].astype(np.float64))
                correct.append((maps["prediction"] == maps["label"])[scored])
        return np.concatenate(radii), np.concatenate(correct)


def parse_row(line: str) -> tuple | None:
    """One complete TSV row as a tuple of :data:`CERT_DTYPE`, or ``None`` for a cut-off or garbled one."""
    fields = line.split("\t")
    if len(fields) != len(CERT_DTYPE):
        return None
    try:
        return tuple(t(v) for (_, t), v in zip(CERT_DTYPE, fields))
    except ValueError:
        return None


def read_certificates(tsv: Path) -> np.ndarray:
    """The per-example certification table (``idx label predict radius correct time``)."""
    rows = [parse_row(line) for line in tsv.read_text().splitlines()[1:] if line.strip()]
    return np.array([r for r in rows if r is not None], dtype=CERT_DTYPE)


def certify_to_store(
    model: nn.Module,
    pset: PerturbationSet,
    data: Any,
    config: RobustConfig,
    sigma: float,
    store: CertificateStore,
    num_classes: int,
    shard: Shard | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CERTIFY the first ``certify.max_examples`` test inputs of ``data`` in order, skipping those in ``store``.

    With ``shard``, only that shard's inputs (its fingerprint records the shard). Returns
    (radius, correct) from :meth:`CertificateStore.results`, where ``correct`` means
    certified and equal to the label.
    """
    cc = config.evaluation.certify
    assert cc is not None
    smoothed = SmoothedClassifier(model, pset, sigma, num_classes)
    fingerprint = certificate_fingerprint(model, pset, config, sigma)
    store.open(fingerprint if shard is None else {**fingerprint, "shard": str(shard)})
    limit = cc.max_examples if cc.max_examples is not None else len(data)
    position = 0
    asked: list[int] = []
    for batch in data.batches(config.evaluation.batch_size, shuffle=False, seed=config.seed, device=pset.device):
        y = require_labels(batch)
        assert batch.index is not None
        for i, idx in enumerate(batch.index.tolist()[: limit - position]):
            position += 1
            if shard is not None and not shard.takes(position - 1):
                continue
            asked.append(idx)
            if store.has(idx):
                continue
            began = time.perf_counter()
            certificate = certify_one(smoothed, batch.x[i : i + 1], idx, config)
            store.add(idx, y[i], certificate, time.perf_counter() - began)
        store.flush()
        if position >= limit:
            break
    return store.results(asked)


def merge_shards(target: CertificateStore, shards: list[CertificateStore]) -> None:
    """Combine the stores of shards 0/k … k−1/k into ``target``, the store an unsharded run would write.

    Refuses shards whose settings differ (naming the setting) or that belong to another
    split, and names missing shards. ``target`` may already hold certificates of the same
    settings (they are kept); re-running the unsharded evaluation afterwards then only
    reads them.
    """
    missing = [str(s.location) for s in shards if not s.exists()]
    if missing:
        raise FileNotFoundError(f"shard stores missing: {', '.join(missing)}; run those shards first (--shard i/k)")
    stamps = [json.loads(s.stamp.read_text()) if s.stamp.is_file() else {} for s in shards]
    expected = [f"{i}/{len(shards)}" for i in range(len(shards))]
    for store, stamp, want in zip(shards, stamps, expected):
        if stamp.get("shard") != want:
            raise ValueError(f"{store.location} holds shard {stamp.get('shard')!r}, expected {want}: merge the shards of one split")
    settings = [{k: v for k, v in stamp.items() if k != "shard"} for stamp in stamps]
    for store, other in zip(shards[1:], settings[1:]):
        differ = sorted(k for k in set(settings[0]) | set(other) if settings[0].get(k) != other.get(k))
        if differ:
            raise ValueError(
                f"{store.location} was certified with other settings than {shards[0].location} "
                f"(differing: {', '.join(differ)}); shards of different runs cannot be merged"
            )
    target.open(settings[0])
    for store in shards:
        store.recover()
        target.absorb(store)
    target.recover()


def certify_one(smoothed: SmoothedClassifier, x: Tensor, idx: int, config: RobustConfig) -> Any:
    """CERTIFY one test input (1, C, H, W) with noise seeded by (seed, idx) alone."""
    cc = config.evaluation.certify
    assert cc is not None
    gen = seeded_generator(config.seed, Stream.CERTIFY_EXAMPLE, idx, device=x.device)
    return smoothed.certify(x, cc.n0, cc.n, cc.alpha, cc.batch_size, generator=gen, correction=cc.correction, tau=cc.tau)
