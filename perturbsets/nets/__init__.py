"""Network architectures, built by name from a config.

``build_cvae("mnist_stn", distribution="bernoulli")`` returns a :class:`~perturbsets.cvae.CVAE`;
:func:`register_cvae` adds a builder of your own. Parameter names and shapes of the built-in
architectures equal the authors' state dicts (``shared/reference/state_dicts``).
"""

from __future__ import annotations

from typing import Callable

from .._names import check_kwargs, unknown_name_message
from ..cvae import CVAE

CVAEBuilder = Callable[..., CVAE]
CVAE_ARCHITECTURES: dict[str, CVAEBuilder] = {}


def register_cvae(name: str) -> Callable[[CVAEBuilder], CVAEBuilder]:
    """Decorator registering ``builder(**kwargs) -> CVAE`` under ``name``."""

    def decorate(builder: CVAEBuilder) -> CVAEBuilder:
        if name in CVAE_ARCHITECTURES:
            raise ValueError(f"a CVAE architecture named {name!r} is already registered")
        CVAE_ARCHITECTURES[name] = builder
        return builder

    return decorate


def build_cvae(name: str, **kwargs) -> CVAE:
    """Build the registered CVAE architecture ``name`` with its keyword options."""
    if name not in CVAE_ARCHITECTURES:
        raise ValueError(unknown_name_message("CVAE architecture", name, CVAE_ARCHITECTURES))
    builder = CVAE_ARCHITECTURES[name]
    check_kwargs(f"CVAE architecture {name!r}", builder, kwargs)
    return builder(**kwargs)


from . import mnist  # noqa: E402,F401  (registers the built-in architectures)
from . import classifiers  # noqa: E402,F401
