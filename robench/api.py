"""`robench.evaluate_model`: evaluate a torch module you already have, from Python, in one call.

The CLI evaluates run directories and weights files; a notebook has a model in memory. This wraps it
as a model source whose identity in the results store is a hash of its own weights (and class), so
changed weights never reuse an old model's rows, and no caller ever invents a hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def weights_hash(model: nn.Module) -> str:
    """16 hex digits of sha256 over the model's class, and every state-dict entry's name, dtype,
    shape and bytes: the same weights give the same rows, any changed value gives new ones."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        if value.numel():
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "py" + digest.hexdigest()[:14]


def evaluate_model(
    model: nn.Module, *, dataset: str, attacks: str = "default", eps: list[float] | None = None,
    n: int | None = None, out: str | Path | None = None, device: str = "auto", seed: int = 0,
    name: str = "python-model", defense: str = "external", show_progress: bool = False,
    eot: int | None = None, surrogate: nn.Module | str | None = None,
):  # fmt: skip
    """Attack `model` on `dataset`'s first `n` test images; return its rows (a DataFrame, as the CSV has them).

    Args:
        model: takes pixels in [0, 1] (N x C x H x W; put your normalization inside it) and returns logits.
        dataset: "mnist", "cifar10" or "imagenet" (CIFAR-10 and ImageNet from $ROBENCH_DATA).
        attacks: attack or suite names, as `robench eval --attack` takes them.
        eps: an epsilon grid for every attack (default: each attack's own grid for the dataset).
        n: the first n test images (default: all).
        out: the results CSV (default results/<dataset>.csv); rows of an unchanged model are reused.
        device, seed: as for `robench eval`.
        name, defense: how the rows label the model.
        eot: gradient samples per attack step, as `robench eval --eot` (default: 20 on a randomized model).
        surrogate: a module (pixels in [0, 1] -> logits), a run directory or ARCH:WEIGHTS whose gradients
            the gradient attacks follow; every adversarial is re-checked on `model`.
    """
    from .data import dataset_info
    from .errors import RobenchError
    from .evaluate import EvalConfig, evaluate
    from .sources import ModelSource

    if not isinstance(model, nn.Module):
        raise RobenchError(f"evaluate_model takes a torch.nn.Module, got {type(model).__name__}")
    dataset_info(dataset)
    source = ModelSource(name=name, model=model.eval(), dataset=dataset, defense=defense,
                         model_hash=weights_hash(model), meta={"config": {"model": type(model).__name__, "dataset": dataset}})  # fmt: skip
    helper = None
    if isinstance(surrogate, nn.Module):
        helper = ModelSource(name=f"{name}-surrogate", model=surrogate.eval(), dataset=dataset, defense="surrogate",
                             model_hash=weights_hash(surrogate), meta={"config": {"model": type(surrogate).__name__, "dataset": dataset}})  # fmt: skip
    config = EvalConfig(attacks=attacks, eps=tuple(eps) if eps is not None else None, n=n, device=device, seed=seed,
                        eot=eot, surrogate=surrogate if isinstance(surrogate, str) else None)  # fmt: skip
    return evaluate([source], config, out=out, show_progress=show_progress, surrogate=helper)
