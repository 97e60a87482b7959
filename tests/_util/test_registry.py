"""Builders by name: options of the wrong type are refused before they reach torch."""

from __future__ import annotations

import numpy as np
import pytest

from perturbsets.classifiers.architectures import build_classifier
from perturbsets.cvae.registry import build_cvae
from perturbsets.perturbations import build_perturbation


@pytest.mark.parametrize(
    "build, options, message",
    [
        (build_classifier, {"name": "digits_cnn", "width": "wide"}, "option 'width' of classifier 'digits_cnn' must be int, got 'wide'"),
        (build_classifier, {"name": "unet", "bilinear": 1}, "option 'bilinear' of classifier 'unet' must be bool, got 1"),
        (build_cvae, {"name": "mnist_fc", "latent_dim": True}, "must be int, got True"),
        (build_cvae, {"name": "mnist_fc", "distribution": 3}, "must be one of 'bernoulli', 'gaussian', got 3"),
        (build_perturbation, {"name": "rts", "scale": 0.9}, "option 'scale' of perturbation 'rts' must be tuple[float, float]"),
    ],
)  # fmt: skip
def test_options_of_the_wrong_type_are_named(build, options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build(**options)


def test_options_of_the_right_type_in_other_spellings_are_taken():
    build_cvae("mnist_fc", input_shape=[1, 8, 8], hidden=np.int64(16), latent_dim=4)  # YAML lists, numpy integers
    build_perturbation("rts", angle=45, scale=[0.9, 1.1])  # an int for a float
    with pytest.raises(ValueError, match="unknown distribution 'gausian'"):
        build_cvae("mnist_fc", distribution="gausian")  # a bad value of the right type: the builder's own message
