"""Data where every example exists in several versions (paper Appendix E.2, Section 5.2).

CIFAR-10-C gives each CIFAR-10 image a clean version and 12 corrupted ones; the
Multi-Illumination dataset gives each scene 25 lightings. A pair ``(x, x̃)`` for learning a
perturbation set is then two versions of one example, and *which* two is a modelling
choice, the pairing strategy of paper Appendix E.2 (Table 7):

=================== ======================================== ===============================
``pairing``         x, x̃                                     pairs per example (V versions)
=================== ======================================== ===============================
``centered``        x = the reference (clean) version r,     V − 1
                    x̃ = any other version                    ("centered at original")
``with_original``   an ordered pair of distinct versions     V · (V − 1)
                    among all V (the clean one included)     ("original + perturbed")
``perturbed_only``  an ordered pair of distinct versions     (V − 1) · (V − 2)
                    among the V − 1 non-reference ones       ("perturbed only")
``fixed``           x = x̃ = version r                        1 (the MI fixed-lighting
                                                             baseline of paper Table 3)
=================== ======================================== ===============================

The reference version r is ``reference_version`` (default 0, where
:func:`perturbsets.datasets.load_cifar10c_versioned` puts the clean image). The authors'
MI enumeration also counted the 25 pairs ``i == j`` per scene (625 instead of 600); no
strategy here does, except ``fixed``.

:class:`VersionedData` is a :class:`~perturbsets.pairs.source.PairSource` like
:class:`~perturbsets.pairs.paired.PairedData` (``batches``, ``evaluation_batches``,
``split``, ``subset``, ``num_batches``, ``with_augment``, ...), so the CVAE training loop,
robust training and evaluation take it unchanged. The versions may be a tensor, a numpy
array, a memory-mapped ``.npy`` (possibly transposed from NHWC), or a
:class:`~perturbsets.pairs.lazy.LazyStack` of per-version memory maps: only the rows of a
batch are ever read, and uint8 is decoded to float32 one batch at a time, so CIFAR-10-C's 600,000 training
perturbations never sit in memory as float32 (the authors' loader held ≈7.4 GB, defect 46).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbsets._util.checks import (
    check_array_values,
    check_tensor_values,
    check_value_range,
    non_negative_int,
)
from perturbsets._util.seeding import DataStream, epoch_generator
from perturbsets.classifiers.scoring import IGNORE_INDEX
from perturbsets.pairs.augment import JointAugmentation, check_augment
from perturbsets.pairs.batch import PairBatch
from perturbsets.pairs.source import PairSource
from perturbsets.pairs.splits import subset_index
from perturbsets.pairs.tensors import check_class_indices

__all__ = ["PAIRINGS", "VersionedData"]

PAIRINGS = ("centered", "with_original", "perturbed_only", "fixed")


# --------------------------------------------------------------------------- helpers


def _is_memory_mapped(array: Any) -> bool:
    """True if a numpy array is (a view of) a memory map: scanning it reads the whole file."""
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap):
            return True
        array = array.base
    import mmap

    return isinstance(array, mmap.mmap)


def _pair_table(pairing: str, num_versions: int, reference: int) -> Tensor:
    """(P, 2) int64 version indices (i, j) of every pair of one example, in enumeration order.

    Orders: ``centered`` by j; ``with_original`` and ``perturbed_only`` i-major, then j
    ascending (j != i). Built with index arithmetic: the j-th "other" version of i is
    ``r + (r >= i)``, which skips i without a Python loop.
    """
    v = num_versions
    others = torch.cat([torch.arange(reference), torch.arange(reference + 1, v)])  # (V-1,) all but r
    if pairing == "centered":
        return torch.stack([torch.full_like(others, reference), others], 1)
    if pairing == "fixed":
        return torch.tensor([[reference, reference]], dtype=torch.int64)
    if pairing == "with_original":
        i = torch.arange(v).repeat_interleave(v - 1)
        r = torch.arange(v - 1).repeat(v)
        return torch.stack([i, r + (r >= i).long()], 1)
    # perturbed_only: the same construction over the V-1 non-reference versions.
    m = v - 1
    a = torch.arange(m).repeat_interleave(m - 1)
    r = torch.arange(m - 1).repeat(m)
    return torch.stack([others[a], others[r + (r >= a).long()]], 1)


def _check_pairing(pairing: Any, num_versions: int, reference: int) -> str:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {list(PAIRINGS)}, got {pairing!r}")
    needed = {"centered": 2, "with_original": 2, "perturbed_only": 3, "fixed": 1}[pairing]
    if num_versions < needed:
        raise ValueError(
            f"pairing {pairing!r} needs at least {needed} versions per example, the data has {num_versions}"
        )
    if not 0 <= reference < num_versions:
        raise ValueError(f"reference_version must be in [0, {num_versions - 1}], got {reference}")
    return pairing


def _check_version_labels(labels: Any, n: int, image_hw: tuple[int, int]) -> Any:
    """(N,) labels as an int64 tensor, or (N, H, W) label maps checked and kept as given."""
    if not hasattr(labels, "shape") or not hasattr(labels, "__getitem__"):
        raise ValueError(f"labels must be an (N,) or (N, H, W) integer array, got {type(labels).__name__}")
    shape = tuple(int(d) for d in labels.shape)
    dtype = labels.dtype
    if isinstance(labels, Tensor):
        is_int = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    else:
        is_int = np.dtype(dtype).kind in "iu"
    if not is_int:
        raise ValueError(f"labels must be integer class indices, got dtype {dtype}")
    if len(shape) == 3:
        if shape != (n, *image_hw):
            raise ValueError(
                f"label maps must have shape ({n}, {image_hw[0]}, {image_hw[1]}) to match {n} examples of "
                f"{image_hw[0]}x{image_hw[1]} pixels, got {shape}"
            )
        # Tensors become int64 now (an uint8 map could not hold IGNORE_INDEX) and are checked;
        # arrays are converted, and their values checked by the scoring, batch by batch, since
        # they may be lazy or memory-mapped.
        if isinstance(labels, Tensor):
            return check_class_indices(labels.detach().cpu().long(), IGNORE_INDEX)
        return labels
    if len(shape) != 1 or shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (or ({n}, H, W) label maps) to match {n} examples, got {shape}")
    if isinstance(labels, Tensor):
        return check_class_indices(labels.detach().cpu().long())
    return check_class_indices(torch.from_numpy(np.array(labels, dtype=np.int64)))


# --------------------------------------------------------------------------- VersionedData


class VersionedData(PairSource):
    """N examples with V versions each; pairs are two versions of one example.

    Args:
        versions: (N, V, C, H, W) uint8 (decoded to float32 / 255 per batch) or float
            (values in ``value_range``), or (N, V, H, W, C) with ``channels_last=True``.
            A torch tensor, a numpy array, a memory map (e.g. ``np.load(f, mmap_mode="r")``,
            possibly ``.transpose(0, 1, 4, 2, 3)``-ed from NHWC), a
            :class:`~perturbsets.pairs.lazy.LazyStack`, or any object with ``shape``,
            ``dtype`` and numpy-style ``obj[rows, cols]`` integer-array indexing. Never
            copied or read whole.
        labels: optional (N,) integer labels (held in memory as int64), or (N, H, W)
            integer label maps for segmentation (e.g. material maps), which may be lazy
            like ``versions`` (only a batch's rows are read). An augmentation then also
            receives and crops the maps: ``augment(x, x_tilde, generator, labels=y)``
            must return ``(x, x_tilde, y)`` (:class:`~perturbsets.pairs.augment.JointCropFlip`
            does, filling its padding with
            :data:`~perturbsets.classifiers.scoring.IGNORE_INDEX`).
        pairing: one of :data:`PAIRINGS` (see the module docstring).
        reference_version: the clean / reference version r (default 0).
        value_range: (low, high) of the decoded values.
        channels_last: ``versions`` is (N, V, H, W, C); batches are permuted to NCHW.
        augment: optional joint augmentation ``(x, x_tilde, generator) -> (x, x_tilde)``
            (e.g. :class:`~perturbsets.pairs.augment.JointCropFlip`), applied in
            ``batches(mode="sample")`` only, as :meth:`with_augment` sets it. :meth:`split`
            keeps it on the training part and drops it from val and test.
            Keep the crop equal to the image size so batches match :attr:`image_shape`.
        check_values: scan every value for NaN/Inf and the range. ``None`` (default)
            scans in-memory data and skips memory maps and lazy objects, where a scan
            would read the whole file.

    Raises:
        ValueError: wrong shapes or dtypes, too few versions for the pairing, a bad
            reference version, labels of the wrong length, or out-of-range values.

    Example::

        data = VersionedData(corrupted, labels, pairing="centered")   # corrupted (N, V, C, H, W)
        batch = next(iter(data.batches(128, shuffle=True, seed=0)))  # batch.x, batch.x_tilde
    """

    def __init__(
        self,
        versions: Any,
        labels: Tensor | np.ndarray | None = None,
        *,
        pairing: str = "centered",
        reference_version: int = 0,
        value_range: tuple[float, float] = (0.0, 1.0),
        channels_last: bool = False,
        augment: JointAugmentation | None = None,
        check_values: bool | None = None,
    ) -> None:
        value_range = check_value_range(value_range, "VersionedData")
        if not hasattr(versions, "shape") or not hasattr(versions, "dtype") or not hasattr(versions, "__getitem__"):
            raise ValueError(
                f"versions must be an (N, V, C, H, W) array, tensor or LazyStack, got {type(versions).__name__}"
            )
        shape = tuple(int(s) for s in versions.shape)
        layout = "(N, V, H, W, C)" if channels_last else "(N, V, C, H, W)"
        if len(shape) != 5:
            raise ValueError(f"versions must have shape {layout}, got {shape}")
        n, v = shape[0], shape[1]
        if n == 0:
            raise ValueError("versions is empty (N = 0); a VersionedData needs at least one example")
        if isinstance(versions, Tensor):
            if versions.dtype == torch.uint8:
                uint8 = True
            elif versions.dtype.is_floating_point:
                uint8, versions = False, versions.float()
            else:
                raise ValueError(f"versions must be uint8 or float, got dtype {versions.dtype}")
        else:
            dtype = np.dtype(versions.dtype)
            if dtype == np.uint8:
                uint8 = True
            elif dtype.kind == "f":
                uint8 = False
            else:
                raise ValueError(f"versions must be uint8 or float, got dtype {dtype}")
        reference_version = non_negative_int(reference_version, "reference_version")
        pairing = _check_pairing(pairing, v, reference_version)
        check_augment(augment)

        # Value scan: uint8 always decodes into [0, 1], so it only needs one when the
        # declared range is narrower than that.
        needs_scan = not (uint8 and value_range[0] <= 0.0 and value_range[1] >= 1.0)
        if check_values is None:
            check_values = isinstance(versions, Tensor) or (
                isinstance(versions, np.ndarray) and not _is_memory_mapped(versions)
            )
        if needs_scan and check_values:
            if isinstance(versions, Tensor):
                check_tensor_values(versions.cpu(), "versions", value_range)
            else:
                check_array_values(versions, "versions", value_range, uint8)

        if labels is not None:
            labels = _check_version_labels(labels, n, tuple(shape[2:4] if channels_last else shape[3:5]))

        self._init(versions, labels, None, pairing, reference_version, value_range, bool(channels_last), augment, uint8)

    def _init(self, versions, labels, ids, pairing, reference, value_range, channels_last, augment, uint8) -> None:
        self._versions = versions
        self._labels = labels
        self._ids = ids  # (n,) rows of the base storage, or None for all of them in order
        self._pairing = pairing
        self._reference = reference
        self._value_range = value_range
        self._channels_last = channels_last
        self._augment = augment
        self._uint8 = uint8
        self._table = _pair_table(pairing, int(versions.shape[1]), reference)

    def _derive(self, *, ids=..., pairing=None, reference=None) -> VersionedData:
        out = VersionedData.__new__(VersionedData)
        out._init(
            self._versions,
            self._labels,
            self._ids if ids is ... else ids,
            self._pairing if pairing is None else pairing,
            self._reference if reference is None else reference,
            self._value_range,
            self._channels_last,
            self._augment,
            self._uint8,
        )
        return out

    # ----------------------------------------------------------------- properties

    def __len__(self) -> int:
        """Number N of examples."""
        return int(self._versions.shape[0]) if self._ids is None else int(self._ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"VersionedData({len(self)} examples × {self.num_versions} versions of shape {self.image_shape}, "
            f"{'uint8' if self._uint8 else 'float'}, pairing={self._pairing!r}, reference_version={self._reference}, "
            f"labels={'yes' if self._labels is not None else 'no'}, augment={self._augment!r}, "
            f"value_range={self._value_range})"
        )

    @property
    def is_stored(self) -> bool:
        """Always True: every pair is a pair of stored versions (``mode="all"`` works)."""
        return True

    @property
    def num_versions(self) -> int:
        """V versions per example."""
        return int(self._versions.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one version (before any augmentation crop)."""
        s = tuple(int(d) for d in self._versions.shape[2:])
        return (s[2], s[0], s[1]) if self._channels_last else s  # type: ignore[return-value]

    @property
    def value_range(self) -> tuple[float, float]:
        return self._value_range

    @property
    def pairing(self) -> str:
        return self._pairing

    @property
    def reference_version(self) -> int:
        return self._reference

    @property
    def pair_table(self) -> Tensor:
        """(P, 2) int64 version indices (i, j) of the P pairs of each example, in ``mode="all"`` order."""
        return self._table.clone()

    @property
    def pairs_per_example(self) -> int:
        """P: V−1 (centered), V(V−1) (with_original), (V−1)(V−2) (perturbed_only), 1 (fixed)."""
        return int(self._table.shape[0])

    @property
    def num_pairs(self) -> int:
        """N · P pairs, the length of the ``mode="all"`` enumeration."""
        return len(self) * self.pairs_per_example

    @property
    def versions(self) -> Any:
        """The underlying storage (all examples, not just this subset's), as given."""
        return self._versions

    @property
    def source_index(self) -> Tensor:
        """(N,) int64 rows of these examples in the storage."""
        return torch.arange(len(self)) if self._ids is None else self._ids.clone()

    @property
    def labels(self) -> Any:
        """(N,) int64 labels, the (N, H, W) label maps as given (possibly lazy), or None.

        Label maps of a subset are not gathered here (that would read every map); index
        the storage with :attr:`source_index`, or iterate batches.
        """
        if self._labels is None or self._ids is None or self.has_label_maps:
            return self._labels
        return self._labels[self._ids]

    @property
    def has_label_maps(self) -> bool:
        """True when every example has a per-pixel label map (segmentation) instead of one label."""
        return self._labels is not None and len(self._labels.shape) == 3

    # ----------------------------------------------------------------- variants

    def with_pairing(self, pairing: str, reference_version: int | None = None) -> VersionedData:
        """The same examples (shared storage) under another pairing strategy."""
        reference = self._reference if reference_version is None else non_negative_int(reference_version, "reference_version")
        _check_pairing(pairing, self.num_versions, reference)
        return self._derive(pairing=pairing, reference=reference)

    def subset(self, indices: Tensor | np.ndarray | Sequence[int]) -> VersionedData:
        """The examples at ``indices`` (in that order) with all their versions; shares storage."""
        idx = subset_index(indices, len(self), "indices", "examples")
        return self._derive(ids=idx if self._ids is None else self._ids[idx])

    # ----------------------------------------------------------------- iteration

    def _check_mode(self, mode: str) -> None:
        if mode not in ("sample", "all", "versions"):
            raise ValueError(f"mode must be 'sample', 'all' or 'versions', got {mode!r}")

    def _num_items(self, mode: str) -> int:
        if mode == "versions":
            return len(self) * self.num_versions
        return len(self) if mode == "sample" else self.num_pairs

    def _iterate(
        self, batch_size: int, shuffle: bool, seed: int, epoch: int, mode: str, device: torch.device, drop_last: bool
    ) -> Iterator[PairBatch]:
        cpu = torch.device("cpu")
        p = self.pairs_per_example
        items = torch.arange(self._num_items(mode))
        if shuffle:
            items = items[torch.randperm(items.numel(), generator=epoch_generator(seed, epoch, DataStream.ORDER, cpu))]
        if mode == "versions":
            examples, version = items // self.num_versions, items % self.num_versions
        elif mode == "all":
            examples, pair_pos = items // p, items % p
        else:
            # Uniform over the P ordered pairs == "i uniform, then j uniform among the
            # valid others" (every i has the same number of partners), in one draw.
            examples = items
            pair_pos = torch.randint(p, (items.numel(),), generator=epoch_generator(seed, epoch, DataStream.CHOICE, cpu))
        vi, vj = (version, version) if mode == "versions" else self._table[pair_pos].unbind(1)
        return self._read(batch_size, examples, vi, vj, mode, device, drop_last)

    def _read(
        self, batch_size: int, examples: Tensor, vi: Tensor, vj: Tensor, mode: str, device: torch.device, drop_last: bool
    ) -> Iterator[PairBatch]:
        """Batches of versions ``vi`` (x) and ``vj`` (x̃) of ``examples``, read from the storage."""
        total = examples.numel()
        stop = total - total % batch_size if drop_last else total
        for start in range(0, stop, batch_size):
            end = start + batch_size
            idx = examples[start:end]
            rows = idx if self._ids is None else self._ids[idx]
            if self._pairing == "fixed" or mode == "versions":
                x = self._gather(rows, vi[start:end], device)
                x_tilde = x.clone()
            else:
                # Both halves in one read of the storage.
                both = self._gather(torch.cat([rows, rows]), torch.cat([vi[start:end], vj[start:end]]), device)
                x, x_tilde = both[: idx.numel()], both[idx.numel() :]
            yield PairBatch(x=x, x_tilde=x_tilde, y=self._gather_labels(rows, device), index=idx)

    def _gather_labels(self, rows: Tensor, device: torch.device) -> Tensor | None:
        """(B,) labels or (B, H, W) label maps of storage rows ``rows``, int64 on ``device``."""
        store = self._labels
        if store is None:
            return None
        if isinstance(store, Tensor):
            return store[rows].to(device)
        return torch.from_numpy(np.asarray(store[rows.numpy()]).astype(np.int64)).to(device)

    def _gather(self, rows: Tensor, cols: Tensor, device: torch.device) -> Tensor:
        """(B, C, H, W) float32 on ``device``: version ``cols[b]`` of storage row ``rows[b]``."""
        store = self._versions
        if isinstance(store, Tensor):
            out = store[rows.to(store.device), cols.to(store.device)]
        else:
            arr = np.asarray(store[rows.numpy(), cols.numpy()])
            if not arr.dtype.isnative:  # e.g. a big-endian '>f4' .npy: torch needs native order
                arr = arr.astype(arr.dtype.newbyteorder("="))
            out = torch.from_numpy(np.ascontiguousarray(arr))
        if self._channels_last:
            out = out.permute(0, 3, 1, 2)
        out = out.to(device)
        # Decode after the move: uint8 crosses to the GPU 4× smaller than float32.
        out = out.float().div_(255.0) if self._uint8 else out.float()
        return out.contiguous()
