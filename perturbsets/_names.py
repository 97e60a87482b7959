"""Helpful errors for names looked up in registries and options passed to builders."""

from __future__ import annotations

import difflib
import inspect
from typing import Callable, Iterable


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """'unknown KIND NAME' plus the nearest valid name and the full list."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid: {', '.join(valid)}"


def check_kwargs(kind: str, fn: Callable, kwargs: dict) -> None:
    """Reject keyword arguments ``fn`` does not take, naming the nearest valid one."""
    params = inspect.signature(fn).parameters
    valid = [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in valid:
            raise ValueError(unknown_name_message(f"option for {kind}", key, valid))
