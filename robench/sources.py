"""Where a model under evaluation comes from: a robench run directory, or an architecture + weights.

Both become a `ModelSource`: the torch module (pixels in [0, 1] in, logits out), the dataset it
was made for, a readable defense label and a hash of its weights file, which identifies its rows
in the results CSV.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .data import dataset_info
from .errors import RobenchError
from .models import MODELS, Normalize, build_model


@dataclass
class ModelSource:
    """A model ready to evaluate, with what the results CSV records about it."""

    name: str
    model: nn.Module
    dataset: str
    defense: str
    model_hash: str
    meta: dict


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256: same weights, same rows."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def from_run(run_dir: str | Path) -> ModelSource:
    """Open a robench run directory (model.safetensors + meta.json)."""
    model, meta = checkpoint.load(run_dir)
    return ModelSource(
        name=str(run_dir), model=model, dataset=meta["config"]["dataset"],
        defense=meta.get("defense", "unknown"), model_hash=file_hash(Path(run_dir) / checkpoint.MODEL_FILE),
        meta=meta,
    )  # fmt: skip


def from_weights(arch: str, weights: str | Path, dataset: str) -> ModelSource:
    """Build `arch` (a robench model name, else a torchvision one) and load a user's weights file.

    The weights are read with safetensors or `torch.load(weights_only=True)`, so a file holding
    arbitrary pickled objects is refused rather than executed. The dataset's normalization is put
    in front of the network, so the weights must expect normalized input.
    """
    info = dataset_info(dataset)
    weights = Path(weights)
    if not weights.is_file():
        raise RobenchError(f"weights file {weights} not found")
    if arch in MODELS:
        model = build_model(arch, dataset)
    else:
        model = nn.Sequential()
        model.add_module("normalize", Normalize(info.mean, info.std))
        model.add_module("net", _torchvision_model(arch, info.num_classes))
    state = _read_state_dict(weights)
    target = model if any(k.startswith("net.") for k in state) else model.net
    checkpoint.load_state(target, state, source=str(weights))
    return ModelSource(
        name=f"{arch}:{weights}", model=model.eval(), dataset=dataset, defense="external",
        model_hash=file_hash(weights), meta={"config": {"model": arch, "dataset": dataset}},
    )  # fmt: skip


def _torchvision_model(arch: str, num_classes: int) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except ValueError:
        raise RobenchError(
            f"unknown architecture {arch!r}: not a robench model ({', '.join(MODELS)}) "
            "nor a torchvision model name"
        ) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        state, _ = checkpoint.read_weights_file(path)
        return state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RobenchError(
            f"refused to load {path}: not a plain weights file ({type(exc).__name__}); "
            "robench loads only tensors, never pickled code"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise RobenchError(f"{path} does not hold a state dict of tensors")
    return state
