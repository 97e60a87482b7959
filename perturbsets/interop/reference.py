"""Load the authors' released ``.pth`` checkpoints (locuslab/perturbation_learning) safely.

Their files are ``torch.save`` pickles of ``{"model_state_dict", "optimizer_state_dict",
"epoch", "val_loss" | "test_loss"}``. They are read with ``torch.load(weights_only=True)``:
PyTorch's restricted unpickler accepts tensors, containers and plain numbers (plus, here,
NumPy numeric scalars, which carry no code) and refuses anything else, so a tampered file
cannot run code. Only ``model_state_dict`` is used.

* :func:`perturbation_set_from_reference` — a CVAE checkpoint (``prior.*``,
  ``recognition.*``, ``generator.*``) plus a radius → :class:`~perturbsets.PerturbationSet`.
* :func:`classifier_from_reference` — a downstream model (WRN-28-10 with the CIFAR-10
  normalisation wrapper, keys ``0.mu``/``0.std``/``1.*``; or the segmentation U-Net).
* :data:`REFERENCE_ARCHITECTURES` — the builder options that reproduce the authors'
  outputs, e.g. ``logvar="linear"`` for the MNIST models, whose log-variance heads had no
  activation.

Once loaded, save the set with :meth:`PerturbationSet.save` (safetensors + JSON) and never
touch the pickle again.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perturbsets._util.registry import unknown_name_message
from perturbsets._util.checkpoint import CheckpointError
from perturbsets.cvae.registry import build_cvae
from perturbsets.classifiers.architectures import CLASSIFIERS, build_classifier
from perturbsets.cvae.mi import MIP5_POOL
from perturbsets.core.perturbation_set import PerturbationSet

# Builder options reproducing the authors' models (shared/reference/official-implementation.md
# §2, §10.1). Their MNIST encoders output the log-variance of a plain linear layer; the CIFAR
# (and Multi-Illumination) ones use the scaled tanh with the negative scale (cvae.ScaledTanh).
REFERENCE_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mnist_fc": {
        "input_shape": (1, 28, 28),
        "hidden": 784,
        "latent_dim": 784,
        "distribution": "bernoulli",
        "logvar": "linear",
    },
    "mnist_conv": {
        "input_shape": (1, 28, 28),
        "distribution": "bernoulli",
        "logvar": "linear",
    },
    "mnist_stn": {
        "input_shape": (1, 42, 42),
        "latent_dim": 128,
        "n_transformers": 5,
        "distribution": "bernoulli",
        "logvar": "linear",
    },
    "cifar10_rectangle": {
        "latent_dim": 512,
        "nblocks": 4,
        "big_ch": 64,
        "small_ch": 16,
        "kernel": 3,
        "padding": 1,
        "input_shape": (3, 32, 32),
        "distribution": "gaussian",
        "logvar": "scaled_tanh",
    },
    "mi_unet": {
        "input_shape": (3, 125, 187),
        "chs": (64, 128, 256, 512, 1024),
        "latent_dim": (128, 64, 32, 16, 16),
        "pool": MIP5_POOL,
        "distribution": "gaussian",
        "logvar": "scaled_tanh",
    },
}

_MODULE_PREFIX = "module."


def _numpy_scalar_globals() -> list:
    """Globals needed to unpickle NumPy numeric scalars (e.g. a ``val_loss`` of type float64).

    ``scalar(dtype, bytes)`` only rebuilds a number from raw bytes; no code runs. Files
    written with NumPy 1.x name it ``numpy.core.multiarray.scalar``, hence the alias.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    for code in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"):
        dtype_class = type(np.dtype(code))
        if dtype_class is not np.dtype:  # NumPy >= 1.25 has one class per dtype
            allowed.append(dtype_class)
    return allowed


def load_reference_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The ``model_state_dict`` of one of the authors' checkpoints, on the CPU.

    Accepts their checkpoint dict or a bare state dict; a ``module.`` prefix (from
    ``nn.DataParallel``) is stripped. Raises FileNotFoundError for a missing file and
    :class:`~perturbsets.checkpoint.CheckpointError` (a ValueError) for a file that holds
    non-tensor objects (refused, never unpickled unsafely), a corrupt file, or a dict
    without ``model_state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types on bad files
        message = str(err)
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in message:
            detail = next((line.strip() for line in message.splitlines() if "WeightsUnpickler error" in line), "")
            detail = detail.split(". Please use")[0].split(" was not an allowed global")[0]  # drop torch's allowlisting advice
            raise CheckpointError(
                f"{path} contains non-tensor Python objects, so it was refused: it will not be unpickled unsafely, "
                "because unpickling can run arbitrary code. perturbsets reads only tensors, containers and numbers "
                "(torch.load(weights_only=True)); re-save the weights alone from a trusted environment "
                f"(torch.save(model.state_dict(), ...)).{' (' + detail + ')' if detail else ''}"
            ) from None
        first = message.strip().splitlines()[0] if message.strip() else ""
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}{': ' + first if first else ''})"
        ) from None

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or a state dict")
    if "model_state_dict" in obj:
        state = obj["model_state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: model_state_dict is a {type(state).__name__}, not a state dict")
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        keys = ", ".join(map(repr, list(obj)[:10])) or "none"
        raise CheckpointError(
            f"{path} has no 'model_state_dict' entry and is not a bare state dict (top-level keys: {keys}); "
            "expected the authors' checkpoint format {'model_state_dict': ..., 'optimizer_state_dict': ..., ...}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {', '.join(map(repr, bad[:10]))}")
    if state and all(k.startswith(_MODULE_PREFIX) for k in state):
        state = {k[len(_MODULE_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor], source: str, what: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error naming every mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} ≠ {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}, checkpoint ≠ model): {_list(shapes, 6)}")
        raise CheckpointError(
            f"the weights in {source} do not fit {what}: " + "; ".join(parts)
            + ". Check the architecture name and options match the checkpoint."
        )
    model.load_state_dict(state, strict=True)


def reference_options(arch: str) -> dict[str, Any]:
    """A copy of the builder options that reproduce the authors' ``arch`` (ValueError if unknown)."""
    if arch not in REFERENCE_ARCHITECTURES:
        raise ValueError(unknown_name_message("reference CVAE architecture", arch, REFERENCE_ARCHITECTURES))
    return copy.deepcopy(REFERENCE_ARCHITECTURES[arch])


def perturbation_set_from_reference(
    path: str | os.PathLike,
    arch: str,
    radius: float,
    *,
    device: str | torch.device = "cpu",
    metrics: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> PerturbationSet:
    """A :class:`PerturbationSet` from one of the authors' CVAE checkpoints.

    Args:
        path: their ``checkpoint_*.pth`` (or a bare state dict saved with ``torch.save``).
        arch: ``mnist_fc``, ``mnist_conv``, ``mnist_stn``, ``cifar10_rectangle`` or
            ``mi_unet``; built with :data:`REFERENCE_ARCHITECTURES` options, weights loaded
            strictly.
        radius: ε of the latent ball (the paper's value for that set, e.g. 28 for CIFAR-10
            common corruptions centred at the original, 17 / 25 / 21 for the
            Multi-Illumination sets at MIP5 / 4 / 3).
        device: where to put the model.
        metrics: stored with the set.
        input_shape: the image shape the set takes, when it differs from the architecture's
            reference one: ``(3, 250, 375)`` and ``(3, 500, 750)`` for the authors' MIP4 and
            MIP3 Multi-Illumination sets (same weights as MIP5).
    """
    options = reference_options(arch)
    if input_shape is not None:
        options["input_shape"] = tuple(int(v) for v in input_shape)
    state = load_reference_state_dict(path)
    cvae = build_cvae(arch, **options)
    load_state_dict_strict(cvae, state, str(path), f"the {arch!r} CVAE")
    pset = PerturbationSet(cvae, radius, architecture=arch, options=options, metrics=metrics)
    return pset.to(device)


def classifier_from_reference(
    path: str | os.PathLike,
    arch: str = "wideresnet_28_10",
    *,
    device: str | torch.device = "cpu",
    **options: Any,
) -> nn.Module:
    """A downstream model from one of the authors' robust-training checkpoints, in eval mode.

    ``arch`` is a registered classifier (:func:`perturbsets.nets.build_classifier`), built
    with ``options``: ``wideresnet_28_10`` (default; the CIFAR-10 models, keys ``0.mu``,
    ``0.std``, ``1.*``) or ``unet`` (Multi-Illumination segmentation, 36 classes). Weights
    are loaded strictly.
    """
    if arch not in CLASSIFIERS:
        raise ValueError(unknown_name_message("classifier", arch, CLASSIFIERS))
    state = load_reference_state_dict(path)
    model = build_classifier(arch, **options)
    load_state_dict_strict(model, state, str(path), f"the {arch!r} classifier")
    return model.to(device).eval()
