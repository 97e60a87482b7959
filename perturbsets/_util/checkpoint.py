"""Weights and training state as safetensors plus JSON: nothing is ever unpickled.

A training checkpoint is one ``.safetensors`` file holding the model's state dict
(``model.*``), the optimizer's tensors (``optim.*``) and, in the header metadata, a JSON
document with everything else (epoch, best validation loss, history, optimizer
hyper-parameters). Being one file, it is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from perturbsets._util.io import atomic_path

# Pickle protocols 2-5 start with 0x80 then the protocol number; torch.save writes a zip.
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class CheckpointError(ValueError):
    """A weights or checkpoint file is missing, corrupt, tampered with, or a pickle."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """A digest of a module's weights (names and values), to recognise the model behind saved results."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing pickles with an explanation."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with its header length (u64, little endian) and then the
    # JSON header; that length's low byte may well be 0x80, so test this before the
    # pickle magic bytes.
    declared = int.from_bytes(head[:8], "little") if len(head) >= 9 else -1
    safetensors_like = head[8:9] == b"{" and 0 <= declared <= path.stat().st_size - 8
    if not safetensors_like and head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a pickle (torch.save) file, not safetensors; perturbsets never unpickles files "
            "because unpickling can run arbitrary code. Convert trusted weights with safetensors.torch.save_file."
        )
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({err}); if it is a torch.save/pickle file it is refused on "
            "purpose, since unpickling can run arbitrary code"
        ) from None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]) -> None:
    """Atomically write model (+ optimizer) tensors and the JSON-serialisable ``state``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"state": state}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"perturbsets": json.dumps(meta)})


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state``."""
    # Read on the CPU: load_state_dict copies into the model's own devices, and optimizer
    # step counters must stay CPU scalars (a CUDA one costs a host sync every step).
    tensors = read_safetensors(path, "cpu")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("perturbsets", "null"))
    if not isinstance(meta, dict) or "state" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a perturbsets checkpoint (no metadata)")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model: {err}") from None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"{path} holds no optimizer state, so training cannot resume from it")
        opt_meta = meta["optimizer"]
        states: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                states.setdefault(int(idx), {})[name] = value
        for idx, scalars in opt_meta["scalars"].items():
            states.setdefault(int(idx), {}).update(scalars)
        optimizer.load_state_dict({"state": states, "param_groups": opt_meta["param_groups"]})
    return meta["state"]
