"""Whole splits of CIFAR-10-C written to disk, seeded per chunk: the ``make-cifar10c`` command's engine.

:func:`make_corrupted_split` corrupts every image of a split (e.g. the 50,000 CIFAR-10
training images, which Hendrycks never released corrupted) in parallel, resumably, in
Hendrycks' layout and in the authors' per-severity layout.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from perturbsets.datasets.cifar10c.frost_textures import check_frost_textures
from perturbsets.datasets.cifar10c.imageops import SIZE
from perturbsets.datasets.cifar10c.registry import CORRUPTIONS, SEVERITIES, corrupt

__all__ = ["CHUNK_SIZE", "make_corrupted_split"]


# Images per random stream in make_corrupted_split: part of the definition of the output.
CHUNK_SIZE = 1000


def _chunk_rng(seed: int, name: str, severity: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), CORRUPTIONS.index(name), int(severity), int(chunk)])
    )


def _corrupt_chunk(args):
    images, name, severity, seed, chunk, frost_textures, frost_seed = args
    rng = _chunk_rng(seed, name, severity, chunk)
    return (
        name,
        severity,
        chunk,
        corrupt(images, name, severity, rng, frost_textures=frost_textures, frost_seed=frost_seed),
    )


def _is_complete(path: Path, shape: tuple[int, ...], dtype=np.uint8) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return False
    return arr.shape == tuple(shape) and arr.dtype == dtype


class _AtomicNpy:
    """A .npy written through a temporary memory map in the same folder, then os.replace'd."""

    def __init__(self, path: Path, shape, dtype=np.uint8):
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=tuple(shape))

    def commit(self):
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.path)

    def abort(self):
        self.array = None
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def _save_atomic(path: Path, array: np.ndarray) -> None:
    writer = _AtomicNpy(path, array.shape, array.dtype)
    try:
        writer.array[...] = array
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def make_corrupted_split(
    images: np.ndarray,
    names: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    layout: Sequence[str] = ("hendrycks", "per_severity"),
    labels: np.ndarray | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    frost_textures: Sequence[np.ndarray] | None = None,
    frost_seed: int = 0,
) -> dict[str, dict[int, np.ndarray]] | None:
    """Corrupt a whole split (e.g. the 50000 CIFAR-10 training images) reproducibly.

    Randomness: images are cut into chunks of ``chunk_size`` (default 1000) in order, and
    chunk ``j`` of corruption ``name`` at severity ``s`` uses its own generator
    ``default_rng(SeedSequence([seed, CORRUPTIONS.index(name), s, j]))``.  The output is
    therefore a function of (images, seed, chunk_size, frost textures) only -- identical
    for any ``workers`` and any subset or order of ``names`` / ``severities``.

    Args:
        images: uint8 (N, 32, 32, 3) HWC RGB, e.g. torchvision ``CIFAR10(...).data``.
        names: corruptions to make (default all 19; see :data:`TRAIN_CORRUPTIONS`).
        severities: subset of 1..5.
        seed: master seed.
        workers: processes (``ProcessPoolExecutor``) when > 1; chunks are the work units.
        progress: show a tqdm bar over chunks.
        out_dir: if given, write files there (created if needed) and return None;
            otherwise return ``{name: {severity: uint8 (N, 32, 32, 3)}}`` (small inputs).
        layout: any of
            ``"hendrycks"`` -- ``<out>/<name>.npy`` uint8 (5N, 32, 32, 3), severity s in rows
            [(s-1)N, sN), as the released CIFAR-10-C (written only when ``severities``
            covers 1..5); with labels, ``labels.npy`` uint8 (5N,) = labels tiled 5 times;
            ``"per_severity"`` -- ``<out>/<name>_<severity>.npy`` uint8 (N, 32, 32, 3), the
            authors' ``cifar-10-c-{train,test}`` layout read by their ``load_cifar10c``.
            With labels and without "hendrycks", ``labels.npy`` is (N,).  (When both
            layouts share a folder, ``labels.npy`` is Hendrycks' (5N,) form, whose first N
            entries are the per-severity labels; the authors' loader takes labels from
            torchvision, not from this file.)
        labels: optional (N,) integer labels, stored as uint8.
        chunk_size: images per random stream (changing it changes the draws).
        frost_textures, frost_seed: as in :func:`corrupt`.

    Files are written atomically (temporary file in the same folder, then ``os.replace``),
    so an existing file is complete; existing files with the expected shape and dtype are
    skipped, which makes an interrupted run resumable (with the same arguments).  A missing
    file is filled from the other layout's existing file when possible instead of
    recomputing.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        raise ValueError(
            f"images must be uint8 (N, {SIZE}, {SIZE}, 3), got {images.dtype} {images.shape}"
        )
    names = tuple(names)
    for nm in names:
        if nm not in CORRUPTIONS:
            from perturbsets._util.registry import unknown_name_message

            raise ValueError(unknown_name_message("corruption", nm, CORRUPTIONS))
    severities = tuple(int(s) for s in severities)
    if (
        not severities
        or any(s not in SEVERITIES for s in severities)
        or len(set(severities)) != len(severities)
    ):
        raise ValueError(f"severities must be distinct values in 1..5, got {severities}")
    layout = tuple(layout)
    for lay in layout:
        if lay not in ("hendrycks", "per_severity"):
            raise ValueError(f"unknown layout {lay!r}; valid: 'hendrycks', 'per_severity'")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if frost_textures is not None:
        frost_textures = check_frost_textures(frost_textures)
    n = images.shape[0]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
            raise ValueError("labels must fit in uint8")
        labels = labels.astype(np.uint8)
    chunks = [
        (j, slice(j * chunk_size, min(n, (j + 1) * chunk_size))) for j in range(-(-n // chunk_size))
    ]

    from tqdm.auto import tqdm

    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        if out_dir is None:
            results = {nm: {s: np.empty_like(images) for s in severities} for nm in names}
            tasks = [(nm, s, j, sl) for nm in names for s in severities for j, sl in chunks]
            with tqdm(
                total=len(tasks), disable=not progress, desc="corruptions", unit="chunk"
            ) as bar:
                for nm, s, j, out in _run(
                    executor, workers, images, tasks, seed, frost_textures, frost_seed
                ):
                    results[nm][s][chunks[j][1]] = out
                    bar.update()
            return results
        _write_split(
            images,
            names,
            severities,
            seed,
            executor,
            workers,
            progress,
            Path(out_dir),
            layout,
            labels,
            chunks,
            frost_textures,
            frost_seed,
        )
        return None
    finally:
        if executor is not None:
            executor.shutdown()


def _run(executor, workers, images, tasks, seed, frost_textures, frost_seed):
    """Yield (name, severity, chunk, array) for tasks (name, severity, chunk, slice)."""
    args = [(images[sl], nm, s, seed, j, frost_textures, frost_seed) for nm, s, j, sl in tasks]
    if executor is None:
        for a in args:
            yield _corrupt_chunk(a)
    else:
        # bounded number of chunks in flight keeps memory small
        from concurrent.futures import FIRST_COMPLETED, wait

        pending, it = set(), iter(args)
        limit = 2 * workers
        for a in it:
            pending.add(executor.submit(_corrupt_chunk, a))
            if len(pending) >= limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()


def _write_split(
    images,
    names,
    severities,
    seed,
    executor,
    workers,
    progress,
    out,
    layout,
    labels,
    chunks,
    frost_textures,
    frost_seed,
):
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    shape = images.shape
    full = set(severities) == set(SEVERITIES)
    hendrycks = "hendrycks" in layout
    if hendrycks and not full:
        warnings.warn(
            "the 'hendrycks' layout needs all 5 severities; writing only the per-severity layout",
            stacklevel=3,
        )
        hendrycks = False
    per_sev = "per_severity" in layout

    if labels is not None:
        lab = np.tile(labels, 5) if hendrycks else labels
        lpath = out / "labels.npy"
        if not (_is_complete(lpath, lab.shape) and np.array_equal(np.load(lpath), lab)):
            _save_atomic(lpath, lab)

    # plan: which (name, severity) must be computed
    plan = []
    for nm in names:
        hpath = out / f"{nm}.npy"
        need_h = hendrycks and not _is_complete(hpath, (5 * n,) + shape[1:])
        for s in severities:
            ppath = out / f"{nm}_{s}.npy"
            need_p = per_sev and not _is_complete(ppath, shape)
            if need_h or need_p:
                plan.append((nm, s, need_h, need_p))

    def copies(need_h, need_p):
        # a missing file is filled from the other layout's existing file
        return (need_h and not need_p and per_sev) or (need_p and not need_h and hendrycks)

    total = len(chunks) * sum(not copies(h, p) for _, _, h, p in plan)
    with tqdm(total=total, disable=not progress, desc="corruptions", unit="chunk") as bar:
        for nm in names:
            items = [p for p in plan if p[0] == nm]
            if not items:
                continue
            hwriter = None
            if items[0][2]:
                hwriter = _AtomicNpy(out / f"{nm}.npy", (5 * n,) + shape[1:])
            pwriters = {}
            try:
                compute = []
                for _, s, need_h, need_p in items:
                    rows = slice((s - 1) * n, s * n)
                    if need_p:
                        pwriters[s] = _AtomicNpy(out / f"{nm}_{s}.npy", shape)
                    if not copies(need_h, need_p):
                        compute.append(s)
                    elif need_h:  # the per-severity file exists
                        hwriter.array[rows] = np.load(out / f"{nm}_{s}.npy", mmap_mode="r")
                    else:  # the hendrycks file exists
                        pwriters[s].array[...] = np.load(out / f"{nm}.npy", mmap_mode="r")[rows]
                for s in [s for s in pwriters if s not in compute]:  # copied: done
                    pwriters.pop(s).commit()
                tasks = [(nm, s, j, sl) for s in compute for j, sl in chunks]
                left = {s: len(chunks) for s in compute}
                for _, s, j, arr in _run(
                    executor, workers, images, tasks, seed, frost_textures, frost_seed
                ):
                    sl = chunks[j][1]
                    if s in pwriters:
                        pwriters[s].array[sl] = arr
                    if hwriter is not None:
                        hwriter.array[(s - 1) * n + sl.start : (s - 1) * n + sl.stop] = arr
                    left[s] -= 1
                    if left[s] == 0 and s in pwriters:  # commit each severity when complete
                        pwriters.pop(s).commit()
                    bar.update()
                for s in list(pwriters):  # only for an empty split (no chunks)
                    pwriters.pop(s).commit()
                if hwriter is not None:
                    hwriter.commit()
                    hwriter = None
            except BaseException:
                for w in pwriters.values():
                    w.abort()
                if hwriter is not None:
                    hwriter.abort()
                raise
