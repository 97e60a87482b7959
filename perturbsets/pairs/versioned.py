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

:class:`VersionedData` has the interface of :class:`perturbsets.data.PairedData`
(``batches``, ``evaluation_batches``, ``split``, ``subset``, ``num_batches``, ...), so the
CVAE training loop, robust training and evaluation take it unchanged. The versions may be
a tensor, a numpy array, a memory-mapped ``.npy`` (possibly transposed from NHWC), or a
:class:`LazyStack` of per-version memory maps: only the rows of a batch are ever read, and
uint8 is decoded to float32 one batch at a time, so CIFAR-10-C's 600,000 training
perturbations never sit in memory as float32 (the authors' loader held ≈7.4 GB, defect 46).

:class:`JointCropFlip` is the pad / random-crop / horizontal-flip augmentation of paper
Appendices E.1 and F.1, applied identically to both images of a pair. The authors' version
silently returned its inputs unchanged (defect 13); this one is tested to move pixels.
:class:`Augmented` adds it (or any joint augmentation) to a :class:`PairedData`.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbsets.pairs.paired import (
    DataSplits,
    JointAugmentation,
    PairBatch,
    PairedData,
    PairSource,
    _as_index,
    _check_values,
    _generator,
    _non_negative_int,
    _positive_int,
    _SCAN_ELEMENTS,
    _STREAM_CHOICE,
    _STREAM_ORDER,
    augmented_batches,
)
from perturbsets.perturbations import _check_value_range
from perturbsets.classifiers.scoring import IGNORE_INDEX

__all__ = [
    "PAIRINGS",
    "LazyStack",
    "VersionedData",
    "JointCropFlip",
    "Augmented",
    "JointAugmentation",
]

PAIRINGS = ("centered", "with_original", "perturbed_only", "fixed")


# --------------------------------------------------------------------------- LazyStack


def _int_or_none(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer scalar (not bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class LazyStack:
    """A lazy ``np.stack(parts, axis=1)``: shape (N, K, *S) without copying the parts.

    Stacking the 12 memory-mapped CIFAR-10-C corruption files would copy 1.8 GB; this
    object keeps the K memory maps and reads only the rows an index asks for.

    Args:
        parts: K arrays of identical shape (N, *S) and dtype (numpy arrays, memory maps or
            CPU tensors, which are viewed as numpy without copying).

    Indexing (the first two axes only; the result is always an in-memory numpy array):
        ``stack[rows]`` -> (B, K, *S) (``rows`` an int gives (K, *S)); ``stack[rows, k]`` with
        an int ``k`` -> part k's rows; ``stack[rows, slice]`` stacks the selected parts;
        ``stack[rows, cols]`` with integer arrays (broadcast together) -> (*broadcast, *S),
        element ``[b]`` = ``parts[cols[b]][rows[b]]``, read with one fancy index per
        distinct version (never a per-sample loop). ``np.asarray(stack)`` materialises all.
    """

    def __init__(self, parts: Sequence[Any]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("LazyStack needs at least one part")
        arrays = []
        for k, part in enumerate(parts):
            if isinstance(part, Tensor):
                if part.device.type != "cpu":
                    raise ValueError(f"LazyStack part {k} is on {part.device}; move it to the CPU first")
                part = part.numpy()
            if not hasattr(part, "shape") or not hasattr(part, "dtype") or not hasattr(part, "__getitem__"):
                raise ValueError(f"LazyStack part {k} must be an array (numpy array or memory map), got {type(part).__name__}")
            arrays.append(part)
        shape, dtype = tuple(arrays[0].shape), np.dtype(arrays[0].dtype)
        if len(shape) < 1:
            raise ValueError("LazyStack parts must have at least one axis (the example axis)")
        for k, part in enumerate(arrays):
            if tuple(part.shape) != shape or np.dtype(part.dtype) != dtype:
                raise ValueError(
                    f"LazyStack part {k} has shape {tuple(part.shape)} and dtype {np.dtype(part.dtype)} but part 0 has "
                    f"{shape} and {dtype}; all parts must match"
                )
        self._parts = arrays
        self._part_shape = shape
        self._dtype = dtype

    @property
    def parts(self) -> list[Any]:
        """The K stacked arrays (not copied)."""
        return list(self._parts)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, K, *S)."""
        return (self._part_shape[0], len(self._parts), *self._part_shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self._part_shape[0]

    def __repr__(self) -> str:
        return f"LazyStack(shape={self.shape}, dtype={self._dtype}, parts={len(self._parts)})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack([np.asarray(p) for p in self._parts], axis=1)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 2 or any(k is Ellipsis or k is None for k in key):
            raise IndexError(
                f"LazyStack indexes the (example, version) axes only, got {len(key)} index entries; "
                "index the result for further axes"
            )
        rows = key[0]
        cols = key[1] if len(key) == 2 else slice(None)
        if isinstance(rows, Tensor):
            rows = rows.cpu().numpy()
        if isinstance(cols, Tensor):
            cols = cols.cpu().numpy()
        k = _int_or_none(cols)
        if k is not None:
            return np.asarray(self._parts[range(len(self._parts))[k]][rows])
        if isinstance(cols, slice):
            chosen = range(len(self._parts))[cols]
            axis = 0 if _int_or_none(rows) is not None else 1
            if not chosen:
                probe = np.asarray(self._parts[0][rows])
                return np.empty(probe.shape[:axis] + (0,) + probe.shape[axis:], dtype=self._dtype)
            return np.stack([np.asarray(self._parts[i][rows]) for i in chosen], axis=axis)
        cols = np.asarray(cols)
        if cols.dtype.kind not in "iu":
            raise IndexError(f"LazyStack version index must be integers, got dtype {cols.dtype}")
        n_parts = len(self._parts)
        if cols.size and (cols.min() < -n_parts or cols.max() >= n_parts):
            raise IndexError(f"version index out of range for {n_parts} versions")
        cols = np.where(cols < 0, cols + n_parts, cols)
        if isinstance(rows, slice):
            # numpy's arr[slice, int_array] for a 1-D array: the selected parts, stacked.
            if cols.ndim != 1:
                raise IndexError("LazyStack[slice, cols] needs a 1-D cols array")
            if not cols.size:
                return self[rows, slice(0, 0)]
            return np.stack([np.asarray(self._parts[int(k)][rows]) for k in cols], axis=1)
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise IndexError(f"LazyStack example index must be integers, got dtype {rows.dtype}")
        rows, cols = np.broadcast_arrays(rows, cols)
        flat_rows, flat_cols = rows.reshape(-1), cols.reshape(-1)
        out = np.empty((flat_rows.size, *self._part_shape[1:]), dtype=self._dtype)
        # One fancy index per distinct version: at most K reads, whatever the batch size.
        for version in np.unique(flat_cols):
            sel = flat_cols == version
            out[sel] = self._parts[int(version)][flat_rows[sel]]
        return out.reshape(*rows.shape, *self._part_shape[1:])


# --------------------------------------------------------------------------- helpers


def _is_memory_mapped(array: Any) -> bool:
    """True if a numpy array is (a view of) a memory map: scanning it reads the whole file."""
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap):
            return True
        array = array.base
    import mmap

    return isinstance(array, mmap.mmap)


def _scan_numpy(array: Any, name: str, value_range: tuple[float, float], uint8: bool) -> None:
    """Chunked NaN/Inf and range scan of an array-like (mirrors data._check_values)."""
    n = array.shape[0]
    per_row = max(1, int(np.prod(array.shape[1:])))
    rows = max(1, _SCAN_ELEMENTS // per_row)
    non_finite, lo, hi = 0, math.inf, -math.inf
    for start in range(0, n, rows):
        chunk = np.asarray(array[start : start + rows])
        if not uint8:
            bad = chunk.size - int(np.count_nonzero(np.isfinite(chunk)))
            if bad:
                non_finite += bad
                continue
        if chunk.size:
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    if non_finite:
        raise ValueError(f"{name} contains {non_finite} NaN/Inf value(s); remove or repair those images")
    if lo == math.inf:
        return
    if uint8:
        lo, hi = lo / 255.0, hi / 255.0
    r_lo, r_hi = value_range
    tol = 1e-5 * (r_hi - r_lo)
    if lo < r_lo - tol or hi > r_hi + tol:
        raise ValueError(
            f"{name} values lie in [{lo:.4g}, {hi:.4g}] but value_range is {value_range}; "
            f"rescale your data to [{r_lo:g}, {r_hi:g}] or pass value_range=..."
        )


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
        # Tensors become int64 now (an uint8 map could not hold IGNORE_INDEX); arrays are
        # converted batch by batch, since they may be lazy or memory-mapped.
        return labels.detach().cpu().long() if isinstance(labels, Tensor) else labels
    if len(shape) != 1 or shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (or ({n}, H, W) label maps) to match {n} examples, got {shape}")
    if isinstance(labels, Tensor):
        return labels.detach().cpu().long()
    return torch.from_numpy(np.array(labels, dtype=np.int64))


# --------------------------------------------------------------------------- VersionedData


class VersionedData(PairSource):
    """N examples with V versions each; pairs are two versions of one example.

    Args:
        versions: (N, V, C, H, W) uint8 (decoded to float32 / 255 per batch) or float
            (values in ``value_range``), or (N, V, H, W, C) with ``channels_last=True``.
            A torch tensor, a numpy array, a memory map (e.g. ``np.load(f, mmap_mode="r")``,
            possibly ``.transpose(0, 1, 4, 2, 3)``-ed from NHWC), a :class:`LazyStack`,
            or any object with ``shape``, ``dtype`` and numpy-style ``obj[rows, cols]``
            integer-array indexing. Never copied or read whole.
        labels: optional (N,) integer labels (held in memory as int64), or (N, H, W)
            integer label maps for segmentation (e.g. material maps), which may be lazy
            like ``versions`` (only a batch's rows are read). An augmentation then also
            receives and crops the maps: ``augment(x, x_tilde, generator, labels=y)``
            must return ``(x, x_tilde, y)`` (:class:`JointCropFlip` does, filling its
            padding with :data:`~perturbsets.tasks.IGNORE_INDEX`).
        pairing: one of :data:`PAIRINGS` (see the module docstring).
        reference_version: the clean / reference version r (default 0).
        value_range: (low, high) of the decoded values.
        channels_last: ``versions`` is (N, V, H, W, C); batches are permuted to NCHW.
        augment: optional joint augmentation ``(x, x_tilde, generator) -> (x, x_tilde)``
            (e.g. :class:`JointCropFlip`), applied in ``batches(mode="sample")`` only.
            :meth:`split` keeps it on the training part and drops it from val and test.
            Keep the crop equal to the image size so batches match :attr:`image_shape`.
        check_values: scan every value for NaN/Inf and the range. ``None`` (default)
            scans in-memory data and skips memory maps and lazy objects, where a scan
            would read the whole file.

    Raises:
        ValueError: wrong shapes or dtypes, too few versions for the pairing, a bad
            reference version, labels of the wrong length, or out-of-range values.
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
        value_range = _check_value_range(value_range, "VersionedData")
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
        reference_version = _non_negative_int(reference_version, "reference_version")
        pairing = _check_pairing(pairing, v, reference_version)
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be callable as augment(x, x_tilde, generator), got {augment!r}")

        # Value scan: uint8 always decodes into [0, 1], so it only needs one when the
        # declared range is narrower than that.
        needs_scan = not (uint8 and value_range[0] <= 0.0 and value_range[1] >= 1.0)
        if check_values is None:
            check_values = isinstance(versions, Tensor) or (
                isinstance(versions, np.ndarray) and not _is_memory_mapped(versions)
            )
        if needs_scan and check_values:
            if isinstance(versions, Tensor):
                _check_values(versions.cpu(), "versions", value_range)
            else:
                _scan_numpy(versions, "versions", value_range, uint8)

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

    def _derive(self, *, ids=..., pairing=None, reference=None, augment=...) -> VersionedData:
        out = VersionedData.__new__(VersionedData)
        out._init(
            self._versions,
            self._labels,
            self._ids if ids is ... else ids,
            self._pairing if pairing is None else pairing,
            self._reference if reference is None else reference,
            self._value_range,
            self._channels_last,
            self._augment if augment is ... else augment,
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
    def augment(self) -> JointAugmentation | None:
        return self._augment

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
        reference = self._reference if reference_version is None else _non_negative_int(reference_version, "reference_version")
        _check_pairing(pairing, self.num_versions, reference)
        return self._derive(pairing=pairing, reference=reference)

    def with_augment(self, augment: JointAugmentation | None) -> VersionedData:
        """The same examples with another (or, with None, no) training augmentation."""
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be callable as augment(x, x_tilde, generator), got {augment!r}")
        return self._derive(augment=augment)

    def subset(self, indices: Tensor | np.ndarray | Sequence[int]) -> VersionedData:
        """The examples at ``indices`` (in that order) with all their versions; shares storage."""
        idx = _as_index(indices, "indices")
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bool(bad.any()):
            raise ValueError(f"indices has values outside [-{n}, {n - 1}] (e.g. {int(idx[bad][0])}) for {n} examples")
        idx = torch.where(idx < 0, idx + n, idx)
        return self._derive(ids=idx if self._ids is None else self._ids[idx])

    def split(self, sizes: Mapping[str, int | float] | Sequence[int | float], seed: int) -> DataSplits:
        """Split by example (all versions of an example go to one part) into train/val/test.

        Same sizes and assignment as :meth:`PairedData.split` (its code is reused): the
        parts of N examples are identical to those of a PairedData of N images. The
        training part keeps ``augment``; val and test get none, so validation never sees
        training augmentation (the authors' CIFAR-10 split did, defect 15).
        """
        parts = PairedData.split(_IndexSplitter(len(self)), sizes, seed)  # type: ignore[arg-type]
        train = self.subset(parts.train)
        return DataSplits(train, self.subset(parts.val).with_augment(None), self.subset(parts.test).with_augment(None))

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
            items = items[torch.randperm(items.numel(), generator=_generator(seed, epoch, _STREAM_ORDER, cpu))]
        if mode == "versions":
            examples, version = items // self.num_versions, items % self.num_versions
        elif mode == "all":
            examples, pair_pos = items // p, items % p
        else:
            # Uniform over the P ordered pairs == "i uniform, then j uniform among the
            # valid others" (every i has the same number of partners), in one draw.
            examples = items
            pair_pos = torch.randint(p, (items.numel(),), generator=_generator(seed, epoch, _STREAM_CHOICE, cpu))
        vi, vj = (version, version) if mode == "versions" else self._table[pair_pos].unbind(1)
        batches = self._read(batch_size, examples, vi, vj, mode, device, drop_last)
        if mode == "sample" and self._augment is not None:
            return augmented_batches(batches, self._augment, seed, epoch, device)
        return batches

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


class _IndexSplitter:
    """Stands in for a dataset of n items in PairedData.split, whose subsets are the indices."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def subset(self, indices: Tensor) -> Tensor:
        return indices


# --------------------------------------------------------------------------- JointCropFlip


def _pair_of_ints(value: Any, name: str) -> tuple[int, int]:
    if _int_or_none(value) is not None:
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}") from None
    return _positive_int(a, name), _positive_int(b, name)


class JointCropFlip:
    """Zero-pad, random crop and random horizontal flip, shared by x and x̃ of each pair.

    The standard CIFAR-10 augmentation (paper Appendix E.1: ``pad=4, crop=(32, 32)``;
    Multi-Illumination, Appendix F.1: pad 10/20/40 at MIP5/4/3). Each pair gets its own
    crop offset and flip, and both of its images get exactly the same ones, so the pair
    stays pixel-aligned. The whole batch is cropped by one ``torch.gather``.

    Args:
        pad: zero padding added on every side (>= 0).
        crop: output (height, width) (an int for a square); ``None`` keeps the input size.
            Must fit in the padded image.
        flip: flip each pair horizontally with probability ½.
        fill: value of the padding (0 = black, as torchvision's zero padding).

    Call ``aug(x, x_tilde, generator)`` with (B, C, H, W) tensors (x_tilde may have a
    different C) -> the augmented pair; ``aug(x, x_tilde, generator, labels=y)`` with
    (B, H, W) label maps also crops and flips them (padding -> ``IGNORE_INDEX``). :meth:`draw` and :meth:`apply` split the random
    draw from its application (e.g. to apply the same crop to a label map).
    """

    def __init__(self, pad: int = 4, crop: int | tuple[int, int] | None = (32, 32), flip: bool = True, fill: float = 0.0) -> None:
        self.pad = _non_negative_int(pad, "pad")
        self.crop = None if crop is None else _pair_of_ints(crop, "crop")
        self.flip = bool(flip)
        self.fill = float(fill)

    def __repr__(self) -> str:
        return f"JointCropFlip(pad={self.pad}, crop={self.crop}, flip={self.flip})"

    def _crop_size(self, height: int, width: int) -> tuple[int, int]:
        ch, cw = (height, width) if self.crop is None else self.crop
        if ch > height + 2 * self.pad or cw > width + 2 * self.pad:
            raise ValueError(
                f"crop {ch}x{cw} does not fit in {height}x{width} images padded by {self.pad} "
                f"({height + 2 * self.pad}x{width + 2 * self.pad})"
            )
        return ch, cw

    def draw(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Random (top, left, flip), each (batch,): crop offsets in the padded image and flags."""
        ch, cw = self._crop_size(height, width)
        top = torch.randint(height + 2 * self.pad - ch + 1, (batch,), generator=generator, device=device)
        left = torch.randint(width + 2 * self.pad - cw + 1, (batch,), generator=generator, device=device)
        if self.flip:
            flip = torch.rand(batch, generator=generator, device=device) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=device)
        return top, left, flip

    def _source_index(self, b: int, h: int, w: int, top: Tensor, left: Tensor, flip: Tensor, device) -> tuple[Tensor, Tensor]:
        """(B, ch·cw) flat source pixel of every output pixel, and (B, ch, cw) whether it lies in the image."""
        ch, cw = self._crop_size(h, w)
        top, left, flip = top.to(device), left.to(device), flip.to(device)
        # Source row/column of every output pixel in the *unpadded* image; the padding is
        # never materialised: out-of-image positions are filled afterwards.
        rows = top[:, None] + torch.arange(ch, device=device) - self.pad  # (B, ch)
        base = torch.arange(cw, device=device)
        cols = torch.where(flip[:, None], cw - 1 - base, base) + left[:, None] - self.pad  # (B, cw)
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
        return flat.reshape(b, ch * cw), inside

    def apply(
        self, x: Tensor, x_tilde: Tensor, top: Tensor, left: Tensor, flip: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """Crop ``[top, top+h) × [left, left+w)`` of each zero-padded pair, then flip where ``flip``.

        ``labels`` (B, H, W) label maps, if given, get the same crop and flip, with
        :data:`~perturbsets.tasks.IGNORE_INDEX` in the padding: padded pixels are never
        scored (the authors padded material maps with 0, the real class "Brick", defect 19).
        Returns ``(x, x_tilde)``, or ``(x, x_tilde, labels)`` when labels are given.
        """
        if x.dim() != 4 or x_tilde.dim() != 4:
            raise ValueError(f"JointCropFlip takes (B, C, H, W) batches, got {tuple(x.shape)} and {tuple(x_tilde.shape)}")
        b, c1, h, w = x.shape
        if (x_tilde.shape[0], *x_tilde.shape[2:]) != (b, h, w):
            raise ValueError(f"x {tuple(x.shape)} and x_tilde {tuple(x_tilde.shape)} must share batch size, height and width")
        if labels is not None and tuple(labels.shape) != (b, h, w):
            raise ValueError(f"labels {tuple(labels.shape)} must be (B, H, W) = ({b}, {h}, {w}) to match the images")
        ch, cw = self._crop_size(h, w)
        flat, inside = self._source_index(b, h, w, top, left, flip, x.device)
        both = torch.cat([x, x_tilde.to(x.dtype)], 1).reshape(b, c1 + x_tilde.shape[1], h * w)
        out = torch.gather(both, 2, flat[:, None].expand(-1, both.shape[1], -1))
        out = out.view(b, -1, ch, cw).masked_fill(~inside[:, None], self.fill)
        if labels is None:
            return out[:, :c1], out[:, c1:].to(x_tilde.dtype)
        inside_l = inside.to(labels.device)
        labels = labels.long()  # IGNORE_INDEX (-100) must fit the padding
        cropped = torch.gather(labels.reshape(b, h * w), 1, flat.to(labels.device)).view(b, ch, cw)
        return out[:, :c1], out[:, c1:].to(x_tilde.dtype), cropped.masked_fill(~inside_l, IGNORE_INDEX)

    def __call__(
        self, x: Tensor, x_tilde: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f"JointCropFlip takes (B, C, H, W) batches, got {tuple(x.shape)}")
        top, left, flip = self.draw(x.shape[0], x.shape[2], x.shape[3], generator, x.device)
        return self.apply(x, x_tilde, top, left, flip, labels)


# --------------------------------------------------------------------------- Augmented


class Augmented:
    """Any paired data (e.g. a :class:`PairedData`) with a joint augmentation on training batches.

    ``Augmented(PairedData(...), JointCropFlip(pad=4))`` behaves like the wrapped data, but
    ``batches(mode="sample")`` applies ``augment(x, x_tilde, generator)`` to every batch
    with a generator seeded by (seed, epoch). ``mode="all"`` and ``evaluation_batches``
    are never augmented; :meth:`split` wraps only the training part. Every other
    attribute is the wrapped object's. (:class:`VersionedData` takes ``augment=``
    directly.)
    """

    def __init__(self, data: Any, augment: JointAugmentation) -> None:
        if not callable(augment):
            raise ValueError(f"augment must be callable as augment(x, x_tilde, generator), got {augment!r}")
        if getattr(data, "augment", None) is not None:
            raise ValueError("the data already has an augmentation; wrapping it would augment every batch twice")
        self._data = data
        self._augment = augment

    def __getattr__(self, name: str) -> Any:
        if name in ("_data", "_augment"):  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self._data, name)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Augmented({self._data!r}, {self._augment!r})"

    @property
    def data(self) -> Any:
        return self._data

    @property
    def augment(self) -> JointAugmentation:
        return self._augment

    def subset(self, indices: Any) -> Augmented:
        return Augmented(self._data.subset(indices), self._augment)

    def split(self, sizes: Any, seed: int) -> DataSplits:
        parts = self._data.split(sizes, seed)
        return DataSplits(Augmented(parts.train, self._augment), parts.val, parts.test)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int = 0,
        mode: str = "sample",
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> Iterator[PairBatch]:
        inner = self._data.batches(
            batch_size, shuffle=shuffle, seed=seed, epoch=epoch, mode=mode, device=device, drop_last=drop_last
        )
        if mode != "sample":
            return inner
        return augmented_batches(inner, self._augment, seed, epoch, torch.device(device))

    def evaluation_batches(
        self, batch_size: int, *, seed: int, passes: int = 1, device: torch.device | str = "cpu", max_pairs: int | None = None
    ) -> Iterator[PairBatch]:
        return self._data.evaluation_batches(batch_size, seed=seed, passes=passes, device=device, max_pairs=max_pairs)
