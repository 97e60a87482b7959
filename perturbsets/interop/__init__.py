"""The authors' released ``.pth`` checkpoints → a :class:`~perturbsets.PerturbationSet` or a classifier.

Read with ``torch.load(weights_only=True)``; the interop layer builds on the core and the
model zoo and nothing in the library imports it back.
"""

from perturbsets.interop.reference import classifier_from_reference, perturbation_set_from_reference

__all__ = ["classifier_from_reference", "perturbation_set_from_reference"]
