"""The generative model: the conditional VAE of paper Section 4 and its architectures by name.

``model``: prior p(z|x), recognition q(z|x,x̃), generator g(z,x), the ELBO; ``mnist``,
``cifar``, ``mi``: the paper's architectures with the authors' parameter names; importing
the package registers them so :func:`build_cvae` finds ``mnist_fc``, ``mnist_conv``,
``mnist_stn``, ``cifar10_rectangle`` and ``mi_unet``.
"""

from perturbsets.cvae import cifar as _cifar  # noqa: F401  (registers its architectures)
from perturbsets.cvae import mi as _mi  # noqa: F401
from perturbsets.cvae import mnist as _mnist  # noqa: F401
from perturbsets.cvae.model import CVAE, CVAELoss, CVAEOutput, Gaussian, kl_divergence
from perturbsets.cvae.registry import CVAE_ARCHITECTURES, build_cvae, register_cvae

__all__ = [
    "CVAE",
    "CVAE_ARCHITECTURES",
    "CVAELoss",
    "CVAEOutput",
    "Gaussian",
    "build_cvae",
    "kl_divergence",
    "register_cvae",
]
