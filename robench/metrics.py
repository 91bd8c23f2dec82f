"""Clean-data metrics shared by training logs and evaluation: accuracy and mean ||J||_F."""

from __future__ import annotations

import torch
from torch import nn

from .data import to_unit_float
from .jacobian import jacobian_norm


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels for uint8 or [0, 1] images, in batches, on the model's device."""
    device = next(model.parameters()).device
    preds = [
        model(to_unit_float(images[i : i + batch_size]).to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `images` the model classifies correctly (model used as is: call .eval() first)."""
    if len(labels) == 0:
        return float("nan")
    return (predict(model, images) == labels.cpu()).sum().item() / len(labels)


def mean_jacobian_norm(model: nn.Module, images: torch.Tensor, *, units: str = "pixel", batch_size: int = 500) -> float:
    """Mean over `images` of the exact ||J(x)||_F in `units` ("normalized": the number the paper's
    MNIST table reports; "pixel": d logits / d pixel)."""
    device = next(model.parameters()).device
    norms = [
        jacobian_norm(model, to_unit_float(images[i : i + batch_size]).to(device), units=units)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(norms).mean().item() if norms else float("nan")
