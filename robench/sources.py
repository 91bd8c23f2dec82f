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
from .data import FOLDER_DATASETS, dataset_classes, dataset_info
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
    in front of the network, so the weights must expect normalized input. On ImageNet-style folders
    every name means torchvision's architecture (robench's registry is built for 28-32 px images),
    and a torchvision model gets as many outputs as the weights' classifier has: whether that fits
    the data is `check_classes`'s question, asked where the model meets the data.
    """
    from .fileio import require_regular_file

    info = dataset_info(dataset)
    weights = require_regular_file(weights, "weights file")
    state = _read_state_dict(weights)
    if arch in MODELS and dataset not in FOLDER_DATASETS:
        model = build_model(arch, dataset)
    else:
        model = nn.Sequential()
        model.add_module("normalize", Normalize(info.mean, info.std))
        model.add_module("net", _torchvision_net(arch, info.num_classes, state))
    target = model if any(k.startswith("net.") for k in state) else model.net
    checkpoint.load_state(target, state, source=str(weights))
    return ModelSource(
        name=f"{arch}:{weights}", model=model.eval(), dataset=dataset, defense="external",
        model_hash=file_hash(weights), meta={"config": {"model": arch, "dataset": dataset}},
    )  # fmt: skip


def check_num_classes(model_outputs: int, dataset_classes: int, where: str, *, model: str = "model") -> None:
    """Refuse a model whose logits do not index the dataset's classes one to one."""
    if model_outputs != dataset_classes:
        raise RobenchError(f"{model} has {model_outputs} outputs but {where} has {dataset_classes} classes")


def check_classes(source: ModelSource, *, root: str | Path | None = None) -> None:
    """Check, before any attack runs, that `source.model` has one output per class of its test data.

    Args:
        source: the model and the dataset name it is evaluated on.
        root: the dataset directory, as passed to `load_dataset` (folders count their classes).
    """
    classes, where = dataset_classes(source.dataset, "test", root=root)
    outputs = model_outputs(source.model, source.dataset)
    check_num_classes(outputs, classes, where, model=f"model {source.name}")


def model_outputs(model: nn.Module, dataset: str) -> int:
    """The model's logit count, from a forward pass of a blank image of the dataset's shape.

    The pass runs on the "meta" device (shapes only, no arithmetic), so even a large ImageNet
    model answers at once on a CPU; a model with an op that has no meta kernel runs for real.
    """
    from torch.func import functional_call

    info = dataset_info(dataset)
    shape = (1, info.channels, info.size, info.size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
                meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
                out = functional_call(model, meta, (torch.zeros(shape, device="meta"),))
            except (NotImplementedError, RuntimeError):
                param = next(model.parameters(), None)
                out = model(torch.zeros(shape, device=param.device if param is not None else "cpu"))
    except RuntimeError as exc:
        raise RobenchError(
            f"model does not take {dataset} images ({info.channels}x{info.size}x{info.size}): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    return int(out.shape[-1])


def _torchvision_net(arch: str, num_classes: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """torchvision's `arch` with as many outputs as the classifier in `state` (default `num_classes`)."""
    net = _torchvision_model(arch, num_classes)
    heads = [name for name, m in net.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.shape[0] == num_classes]  # fmt: skip
    if heads:
        saved = state.get(f"{heads[-1]}.weight", state.get(f"net.{heads[-1]}.weight"))
        if saved is not None and saved.ndim >= 2 and saved.shape[0] != num_classes:
            net = _torchvision_model(arch, int(saved.shape[0]))
    return net


def _torchvision_model(arch: str, num_classes: int) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError:
        raise RobenchError(
            f"unknown architecture {arch!r}: not a robench model ({', '.join(MODELS)}) "
            "nor a torchvision model name"
        ) from None
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise RobenchError(f"--arch {arch} is a torchvision {builder.__module__.split('.')[-1]} model, not an image "
                           "classifier; robench evaluates classifiers (torchvision.models' own list)")  # fmt: skip
    try:
        return builder(weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise RobenchError(f"--arch {arch} cannot be built as a {num_classes}-class classifier "
                           f"({str(exc).splitlines()[0][:150]})") from None


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
    if not isinstance(state, dict):
        raise RobenchError(f"{path} does not hold a state dict of tensors")
    from .schemas import check_weights

    check_weights(state, {}, path)
    return state
