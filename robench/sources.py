"""Where a model under evaluation comes from: a robench run directory, or an architecture + weights.

Both become a `ModelSource`: the torch module (pixels in [0, 1] in, logits out), the dataset it
was made for, a readable defense label and a hash of its weights file, which identifies its rows
in the results CSV.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .data import FOLDER_DATASETS, dataset_classes, dataset_info
from .errors import RobenchError
from .run_files import file_hash  # noqa: F401 - public here too
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


def from_run(run_dir: str | Path) -> ModelSource:
    """Open a robench run directory (model.safetensors + meta.json)."""
    model, meta = checkpoint.load(run_dir)
    return ModelSource(
        name=str(run_dir), model=model, dataset=meta["config"]["dataset"],
        defense=meta.get("defense", "unknown"), model_hash=file_hash(Path(run_dir) / checkpoint.MODEL_FILE),
        meta=meta,
    )  # fmt: skip


ARCH_SOURCES = ("robench", "torchvision", "timm")
NORMALIZE_CHOICES = "dataset, none or MEAN,STD (one value per channel each, e.g. 0.5,0.25 or 0.4,0.4,0.4,0.2,0.2,0.2)"


def parse_arch(arch: str, dataset: str) -> tuple[str, str]:
    """(registry, name) of an --arch: `robench:NAME`, `torchvision:NAME` or `timm:NAME`.

    A bare name keeps its meaning from before the prefixes: robench's model of that name when there
    is one for the dataset (so `resnet18` on CIFAR-10 is robench's CIFAR ResNet-18), else torchvision's
    (always on ImageNet-style folders, robench's registry being built for 28-32 px images).
    """
    if ":" in arch:
        registry, _, name = arch.partition(":")
        if registry not in ARCH_SOURCES or not name:
            raise RobenchError(f"--arch {arch!r}: write NAME or one of {', '.join(p + ':NAME' for p in ARCH_SOURCES)}")
        if registry == "robench" and name not in MODELS:
            raise RobenchError(f"unknown robench model {name!r}; choose from {', '.join(MODELS)}")
        if registry == "robench" and dataset in FOLDER_DATASETS:
            raise RobenchError(f"robench:{name} is built for 28-32 px images, not {dataset}; use torchvision:NAME")
        return registry, name
    return ("robench", arch) if arch in MODELS and dataset not in FOLDER_DATASETS else ("torchvision", arch)


def parse_normalize(text: str | None, dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """--normalize: the (mean, std) put in front of the network, or None for no normalization layer."""
    import math

    info = dataset_info(dataset)
    if text is None or text == "dataset":
        return info.mean, info.std
    if text == "none":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise RobenchError(f"--normalize takes {NORMALIZE_CHOICES}; got {text!r}") from None
    if len(values) != 2 * info.channels or not all(math.isfinite(v) for v in values):
        raise RobenchError(f"--normalize for {dataset} ({info.channels} channel(s)) takes {2 * info.channels} finite "
                           f"numbers (means, then stds); got {text!r}")  # fmt: skip
    mean, std = tuple(values[: info.channels]), tuple(values[info.channels :])
    if min(std) <= 0:
        raise RobenchError(f"--normalize stds must be > 0; got {', '.join(map(str, std))}")
    return mean, std


def from_weights(arch: str, weights: str | Path, dataset: str, *, normalize: str | None = "dataset",
                 num_classes: int | None = None) -> ModelSource:  # fmt: skip
    """Build `arch` and load a user's weights file into it.

    Args:
        arch: `robench:NAME`, `torchvision:NAME`, `timm:NAME`, or a bare name (see `parse_arch`).
        weights: a .safetensors file or a .pth state dict, read with safetensors or
            `torch.load(weights_only=True)`, so a file holding pickled code is refused, never run.
        dataset: the data it is evaluated on (input shape, classes, the default normalization).
        normalize: "dataset" (the dataset's mean and std in front of the network: the weights expect
            normalized input), "none" (the network takes pixels in [0, 1] itself) or "MEAN,STD".
        num_classes: the network's outputs, where the weights do not tell (default: as many as the
            weights' classifier has, else the dataset's classes). Whether that fits the data is
            `check_classes`'s question, asked where the model meets the data.
    """
    from .fileio import require_regular_file

    info = dataset_info(dataset)
    registry, name = parse_arch(arch, dataset)
    stats = parse_normalize(normalize, dataset)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise RobenchError(f"--num-classes must be a positive integer, got {num_classes}")
    weights = require_regular_file(weights, "weights file")
    state = _read_state_dict(weights)
    classes = num_classes or info.num_classes
    if registry == "robench":
        if num_classes not in (None, info.num_classes):
            raise RobenchError(f"robench:{name} on {dataset} has {info.num_classes} outputs; --num-classes does not apply")
        net = build_model(name, dataset).net
    elif registry == "torchvision":
        net = _torchvision_net(name, classes, state, fixed=num_classes is not None)
    else:
        net = _timm_net(name, classes, state, fixed=num_classes is not None)
    model = nn.Sequential()
    model.add_module("normalize", Normalize(*stats) if stats is not None else nn.Identity())
    model.add_module("net", net)
    target = model if any(k.startswith("net.") for k in state) else model.net
    checkpoint.load_state(target, state, source=str(weights))
    norm_label = "dataset" if normalize in (None, "dataset") else normalize
    # The rows' identity: the weights file, and whatever else makes it another model. Today's meaning of
    # a bare name with the dataset's normalization keeps the plain file hash (and the rows it has).
    plain = (registry, name) == parse_arch(name, dataset) and norm_label == "dataset" and num_classes is None
    model_hash = file_hash(weights) if plain else hashlib.sha256(
        json.dumps([file_hash(weights), registry, name, stats, num_classes]).encode()).hexdigest()[:16]  # fmt: skip
    return ModelSource(
        name=f"{arch}:{weights}", model=model.eval(), dataset=dataset, defense="external",
        model_hash=model_hash,
        meta={"config": {"model": f"{registry}:{name}", "dataset": dataset, "normalize": norm_label}},
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
    """The model's logit count, from a forward pass of one blank image of the dataset's shape.

    One real image, not the "meta" device: a meta-device `functional_call` imports torch._dynamo,
    about 2 s of every eval's start-up, while one forward pass costs milliseconds for the models
    robench trains and well under a second on a CPU for an ImageNet ResNet.
    """
    info = dataset_info(dataset)
    shape = (1, info.channels, info.size, info.size)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        with torch.no_grad():
            out = model(torch.zeros(shape, device=param.device if param is not None else "cpu"))
    except RuntimeError as exc:
        raise RobenchError(
            f"model does not take {dataset} images ({info.channels}x{info.size}x{info.size}): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    return int(out.shape[-1])


def _torchvision_net(arch: str, num_classes: int, state: dict[str, torch.Tensor], *, fixed: bool = False) -> nn.Module:
    """torchvision's `arch` with as many outputs as the classifier in `state` (default `num_classes`;
    exactly `num_classes` when `fixed`, i.e. given by --num-classes)."""
    net = _torchvision_model(arch, num_classes)
    if fixed:
        return net
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


def _timm_net(arch: str, num_classes: int, state: dict[str, torch.Tensor], *, fixed: bool = False) -> nn.Module:
    """timm's `arch` (an optional extra: `pip install robench[timm]`), with as many outputs as the
    classifier in `state` has (default `num_classes`; exactly that when `fixed`)."""
    try:
        import timm
    except ImportError:
        raise RobenchError("timm: models need the optional extra: pip install 'robench[timm]'") from None
    if arch not in timm.list_models():
        raise RobenchError(f"unknown timm model {arch!r} (see timm.list_models())")
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if fixed:
        return net
    head = getattr(net, "get_classifier", lambda: None)()
    name = next((n for n, m in net.named_modules() if m is head), None) if isinstance(head, nn.Module) else None
    saved = state.get(f"{name}.weight", state.get(f"net.{name}.weight")) if name else None
    if saved is not None and saved.ndim >= 2 and saved.shape[0] != num_classes:
        net = timm.create_model(arch, pretrained=False, num_classes=int(saved.shape[0]))
    return net


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
