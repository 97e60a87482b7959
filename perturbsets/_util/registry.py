"""Helpful errors for names looked up in registries and options passed to builders."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import numbers
import types
import typing
from typing import Any, Callable, Iterable


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


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp``; annotations not modelled here accept anything."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        # Only the type: the builder names the valid values, and the nearest one, itself.
        return any(isinstance(value, type(a)) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            # A wrong length is the builder's to report: it knows what the items mean.
            return all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def check_kwarg_types(kind: str, fn: Callable, kwargs: dict) -> None:
    """Reject keyword arguments whose value does not fit ``fn``'s annotation, naming the expected type.

    Config files give options as plain YAML; a string where a builder takes an integer would
    otherwise fail deep inside torch.
    """
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation that cannot be resolved is the builder's to check
        return
    for key, value in kwargs.items():
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(
                f"option {key!r} of {kind} must be {_type_name(hints[key])}, got {value!r}; give it a value of that type"
            )


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
        check_kwarg_types(f"{self.kind} {name!r}", builder, options)
        return builder(**options)
