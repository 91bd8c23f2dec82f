"""Model registry: every model takes pixels in [0, 1] and normalizes inside itself.

Keeping normalization in the model (not in the data transform) is what makes an attack's epsilon
mean "pixel units", the unit every robustness paper reports.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .data import DatasetInfo, dataset_info
from .errors import RobenchError


class Normalize(nn.Module):
    """Subtract the dataset mean and divide by its std, channel-wise, as the model's first layer."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GeneratorDropout(nn.Dropout):
    """nn.Dropout whose masks can come from an explicit generator, or be given whole.

    Why: a training run's dropout masks used to come from the global RNG, in an order that a group
    of models trained side by side (robench.side_by_side) cannot reproduce. With `generator` set
    (the training loop sets it) each mask is `bernoulli(1 - p)` drawn from that generator, scaled by
    1 / (1 - p); with `mask` set (a buffer, so torch.func.functional_call can supply it) that tensor
    is the scaled mask itself. Neither set: plain nn.Dropout. Eval mode is the identity, as always.
    """

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.generator: torch.Generator | None = None
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.mask is not None:
            return x * self.mask
        if self.p == 0:
            return x
        if self.generator is None:
            return super().forward(x)
        return x * dropout_mask(x.shape, self.p, self.generator, x.device, x.dtype)


def dropout_mask(shape, p: float, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """keep / (1 - p) with keep ~ bernoulli(1 - p) from `generator`: the one way robench draws masks."""
    keep = torch.empty(shape, device=device, dtype=dtype).bernoulli_(1 - p, generator=generator)
    return keep / (1 - p)


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Make every GeneratorDropout of `model` draw its masks from `generator` (None: the global RNG)."""
    for module in model.modules():
        if isinstance(module, GeneratorDropout):
            module.generator = generator


def _lenet(info: DatasetInfo, dropout: float) -> nn.Module:
    """The paper's LeNet' as PAPER.md reads it: conv32-pool-conv64-pool-fc1024-(dropout)-fc."""
    side = info.size // 4
    return nn.Sequential(
        nn.Conv2d(info.channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, 1024), nn.ReLU(),
        GeneratorDropout(dropout), nn.Linear(1024, info.num_classes),
    )  # fmt: skip


def _lenet5(info: DatasetInfo, dropout: float) -> nn.Module:
    """LeNet-5 with tanh, as a third-party reproduction of the paper used it (dropout after FC1, FC2)."""
    side = (info.size // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(info.channels, 6, 5, padding=2), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * side * side, 120), nn.Tanh(), GeneratorDropout(dropout),
        nn.Linear(120, 84), nn.Tanh(), GeneratorDropout(dropout), nn.Linear(84, info.num_classes),
    )  # fmt: skip


def _mlp(info: DatasetInfo, dropout: float) -> nn.Module:
    """The reference code's example network: 784-200-200-10 with ReLU."""
    inputs = info.channels * info.size * info.size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, 200), nn.ReLU(), GeneratorDropout(dropout),
        nn.Linear(200, 200), nn.ReLU(), GeneratorDropout(dropout), nn.Linear(200, info.num_classes),
    )  # fmt: skip


def _resnet18(info: DatasetInfo, dropout: float) -> nn.Module:
    """torchvision's ResNet-18 in its CIFAR form: 3x3 stem with stride 1 and no max-pool."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=info.num_classes)
    net.conv1 = nn.Conv2d(info.channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Sequential(GeneratorDropout(dropout), net.fc)
    return net


MODELS: dict[str, Callable[[DatasetInfo, float], nn.Module]] = {
    "lenet": _lenet,
    "lenet5": _lenet5,
    "mlp": _mlp,
    "resnet18": _resnet18,
}


def build_model(name: str, dataset: str, *, dropout: float = 0.0) -> nn.Module:
    """Build a registered model for a dataset, with normalization as its first layer.

    Args:
        name: a key of `MODELS`.
        dataset: a key of `robench.data.DATASETS`; fixes input shape, classes and normalization.
        dropout: dropout rate of the model's dropout layers (0 keeps them as identities).

    Returns:
        nn.Sequential(Normalize, net): its state dict keys start with "net." for the network.
    """
    if name not in MODELS:
        raise RobenchError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if not 0.0 <= dropout < 1.0:
        raise RobenchError(f"dropout must be in [0, 1), got {dropout}")
    info = dataset_info(dataset)
    model = nn.Sequential()
    model.add_module("normalize", Normalize(info.mean, info.std))
    model.add_module("net", MODELS[name](info, dropout))
    return model


def xavier_init_(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for conv and linear layers (the paper's recipe)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
