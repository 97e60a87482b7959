"""Argument checks shared across layers: integers, index lists, value ranges, image values.

Each check returns the normalised value or raises ``ValueError`` with a message that names
the argument and says how to fix it.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_tensor",
    "as_index",
    "int_or_none",
    "non_negative_int",
    "positive_int",
    "positive_finite",
    "check_value_range",
    "check_tensor_values",
    "check_array_values",
]

# Relative slack on the value-range check, so float round-off in upstream transforms
# (e.g. bilinear weights summing to 1 + 1e-7) is not reported as out-of-range data.
_RANGE_TOL = 1e-5
# Elements per chunk when scanning for NaN/Inf and the range: bounds the temporary memory
# of the scan for datasets that barely fit in memory.
_SCAN_ELEMENTS = 1 << 22


def as_tensor(value: Any, name: str) -> Tensor:
    """A tensor or numeric numpy array as a tensor (numpy memory is shared, not copied)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"{name} is a numpy array of Python objects; stack it into a numeric array first")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def as_index(value: Any, name: str) -> Tensor:
    """A 1-D sequence of integers (list, range, tensor or array) as a CPU int64 tensor."""
    t = as_tensor(value, name) if not isinstance(value, (list, tuple, range)) else torch.as_tensor(list(value))
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got shape {tuple(t.shape)}")
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer indices, got dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.int64)


def int_or_none(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer scalar (not bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def non_negative_int(value: Any, name: str) -> int:
    """An integer >= 0 (bools and floats are refused, numpy integers accepted)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1."""
    out = non_negative_int(value, name)
    if out == 0:
        raise ValueError(f"{name} must be >= 1, got 0")
    return out


def positive_finite(value: Any, name: str) -> float:
    """``value`` as a float; a ValueError unless it is a finite number > 0 (a radius, ε, σ, a step size)."""
    if isinstance(value, (bool, str)) or value is None:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return number


def check_value_range(value_range: Any, what: str) -> tuple[float, float]:
    """A finite pair (low, high) with low < high, as floats."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: value_range must be a pair (low, high), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{what}: value_range must be finite with low < high, got ({lo}, {hi})")
    return lo, hi


def _check_range(lo: float, hi: float, name: str, value_range: tuple[float, float]) -> None:
    r_lo, r_hi = value_range
    tol = _RANGE_TOL * (r_hi - r_lo)
    if lo < r_lo - tol or hi > r_hi + tol:
        raise ValueError(
            f"{name} values lie in [{lo:.4g}, {hi:.4g}] but value_range is {value_range}; "
            f"rescale your data to [{r_lo:g}, {r_hi:g}] or pass value_range=..."
        )


def check_tensor_values(t: Tensor, name: str, value_range: tuple[float, float]) -> None:
    """Raise if ``t`` has NaN/Inf or decoded values outside ``value_range`` (chunked scan).

    uint8 values decode to ``value / 255``.
    """
    if t.numel() == 0:
        return
    rows = max(1, _SCAN_ELEMENTS // max(1, t[0].numel()))
    non_finite, lo, hi = 0, math.inf, -math.inf
    for chunk in t.split(rows):
        if chunk.dtype.is_floating_point:
            finite = torch.isfinite(chunk)
            bad = int(finite.numel() - finite.sum())
            if bad:
                non_finite += bad
                continue
        c_lo, c_hi = torch.aminmax(chunk)
        lo, hi = min(lo, float(c_lo)), max(hi, float(c_hi))
    if non_finite:
        raise ValueError(
            f"{name} contains {non_finite} NaN/Inf value(s) out of {t.numel()}; remove or repair those images"
        )
    if t.dtype == torch.uint8:
        lo, hi = lo / 255.0, hi / 255.0
    _check_range(lo, hi, name, value_range)


def check_array_values(array: Any, name: str, value_range: tuple[float, float], uint8: bool) -> None:
    """:func:`check_tensor_values` for an array-like read in row chunks (e.g. a memory map or lazy stack)."""
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
    _check_range(lo, hi, name, value_range)
