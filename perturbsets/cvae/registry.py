"""CVAE architectures, built by name from a config.

``build_cvae("mnist_stn", distribution="bernoulli")`` returns a :class:`~perturbsets.cvae.CVAE`;
:func:`register_cvae` adds a builder of your own. Parameter names and shapes of the built-in
architectures equal the authors' state dicts (``shared/reference/state_dicts``).
"""

from __future__ import annotations

from perturbsets._util.registry import Registry
from perturbsets.cvae.model import CVAE

CVAE_ARCHITECTURES = Registry("CVAE architecture")
register_cvae = CVAE_ARCHITECTURES.register


def build_cvae(name: str, **options) -> CVAE:
    """Build the registered CVAE architecture ``name`` with its keyword options (paper Appendices D–F).

    Unknown names and options raise a ValueError naming the nearest valid one.

    Example::

        cvae = build_cvae("mnist_stn", distribution="bernoulli")
        pset = PerturbationSet(cvae, radius=8.8, architecture="mnist_stn")
    """
    return CVAE_ARCHITECTURES.build(name, **options)

