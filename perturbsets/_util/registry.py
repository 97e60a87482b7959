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


class Registry(dict):
    """Names → builders of one kind, with errors that suggest the nearest name or option."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator registering ``builder(**options)`` under ``name``."""

        def decorate(builder: Callable) -> Callable:
            if name in self:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self[name] = builder
            return builder

        return decorate

    def build(self, name: str, **options):
        """Call the builder registered as ``name`` with its keyword options."""
        if name not in self:
            raise ValueError(unknown_name_message(self.kind, name, self))
        builder = self[name]
        check_kwargs(f"{self.kind} {name!r}", builder, options)
        return builder(**options)
