"""Network architectures, built by name from a config.

``build_cvae("mnist_stn", distribution="bernoulli")`` returns a :class:`~perturbsets.cvae.CVAE`;
:func:`register_cvae` adds a builder of your own. Parameter names and shapes of the built-in
architectures equal the authors' state dicts (``shared/reference/state_dicts``).
"""

from __future__ import annotations

from .._names import Registry
from ..cvae import CVAE

CVAE_ARCHITECTURES = Registry("CVAE architecture")
register_cvae = CVAE_ARCHITECTURES.register


def build_cvae(name: str, **options) -> CVAE:
    """Build the registered CVAE architecture ``name`` with its keyword options."""
    return CVAE_ARCHITECTURES.build(name, **options)


from . import mnist  # noqa: E402,F401  (registers the built-in architectures)
from . import classifiers  # noqa: E402,F401
from .classifiers import build_classifier, register_classifier  # noqa: E402,F401
from . import cifar  # noqa: E402,F401
from . import mi  # noqa: E402,F401
