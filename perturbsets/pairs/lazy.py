"""A lazy stack of equally shaped arrays: version k of example i read without copying the rest.

CIFAR-10-C keeps every corruption in its own (memory-mapped) file; :class:`LazyStack`
presents K such files as one (N, K, ...) array for
:class:`~perturbsets.pairs.versioned.VersionedData` and reads only the rows a batch asks for.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch import Tensor

from perturbsets._util.checks import int_or_none

__all__ = ["LazyStack"]


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
        k = int_or_none(cols)
        if k is not None:
            return np.asarray(self._parts[range(len(self._parts))[k]][rows])
        if isinstance(cols, slice):
            chosen = range(len(self._parts))[cols]
            axis = 0 if int_or_none(rows) is not None else 1
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
