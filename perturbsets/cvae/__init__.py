"""The generative model: the conditional VAE of paper Section 4 and its architectures by name.

Importing the package registers the built-in architectures (``mnist_fc``, ``mnist_conv``,
``mnist_stn``, ``cifar10_rectangle``, ``mi_unet``) so :func:`build_cvae` finds them.
"""

from perturbsets.cvae import cifar as _cifar  # noqa: F401  (registers its architectures)
from perturbsets.cvae import mi as _mi  # noqa: F401
from perturbsets.cvae import mnist as _mnist  # noqa: F401
