"""The model the attacks search with: on a CPU, a copy of a convolutional model with its weights and inputs in
channels_last memory order, where PyTorch's CPU kernels run faster than in the default order: max pooling
above all (the first pool of LeNet', 60 images: 3.6 ms in the default order, 0.34 ms in channels_last; convolutions
about equal). Measured on 2 cores, torch 2.14.1: forward pass 1.4x on the demo LeNet', 1.46x on LeNet-5, 1.5x on
ResNet-18 (CIFAR shape); forward and backward 1.15x, 1.46x and 1.13x. Square, a forward pass per query, gains
the most (benchmarks/bench_autoattack.py --copies).

Only the search uses the copy: every point an attack returns is re-checked on the model itself
(`verify_adversarials`), and clean predictions come from it too, so a verdict never rests on the copy. The
copy computes the same function with the floating-point sums in another order (logits within about 1e-5 of the
model's), so an attack's path may differ at a near-tie, as it may between two machines. Not used on a GPU (not
measured there), on models without Conv2d layers (nothing to gain), on randomized models re-checked by a
majority (a copy would draw its own randomness), or when `ROBENCH_FAST_COPY=0` (the benchmarks' switch).
"""

from __future__ import annotations

import copy
import os
import weakref

import torch
from torch import nn

_COPIES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


class ChannelsLast(nn.Module):
    """`net` (its weights already channels_last) fed 4-d inputs in channels_last order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def attack_model(model: nn.Module, votes: int = 1) -> nn.Module:
    """The module an attack should search with: `model`'s channels_last copy where that is faster (see the
    module docstring), else `model` itself. The copy is made once per state of the model's weights."""
    if votes > 1 or os.environ.get("ROBENCH_FAST_COPY", "1") == "0" or not _worth_copying(model):
        return model
    state = _state(model)
    cached = _COPIES.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    try:
        fast = ChannelsLast(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    except Exception:  # a module deepcopy or .to() cannot handle: search with the model itself
        return model
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    _COPIES[model] = (state, fast)
    return fast


def _worth_copying(model: nn.Module) -> bool:
    tensors = list(model.parameters()) + list(model.buffers())
    return (not model.training and bool(tensors) and all(t.device.type == "cpu" for t in tensors)
            and any(isinstance(m, nn.Conv2d) for m in model.modules()))  # fmt: skip


def _state(model: nn.Module) -> tuple:
    """Changes whenever a weight or buffer is replaced or written in place (torch's version counter)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))
