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
from collections import OrderedDict

import torch
from torch import nn

_KEPT = 4  # copies kept at once (a model and its surrogate alternate); bounded, so a copy never leaks for long
_COPIES: "OrderedDict[int, tuple]" = OrderedDict()  # id(model) -> (weakref to model, state, copy or model)


class ChannelsLast(nn.Module):
    """`net` (its weights already channels_last) fed 4-d inputs in channels_last order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def attack_model(model: nn.Module, sample: torch.Tensor, votes: int = 1) -> nn.Module:
    """The module an attack should search with on inputs like `sample`: `model`'s channels_last copy where that
    is faster (see the module docstring), else `model` itself.

    The copy is made once per state of the weights (their version counters) and, before every use, checked
    to give the model's logits on the first image of `sample` (within 1e-4 relative): a copy gone stale
    through writes the counters miss (`p.data.add_`, an attribute such as a temperature) is made again, and
    a model whose copy computes something else or fails (a `.view` on channels_last activations, a module
    deepcopy cannot handle, randomness the evaluation did not detect) is searched as it is."""
    if votes > 1 or os.environ.get("ROBENCH_FAST_COPY", "1") == "0" or len(sample) == 0 or not _worth_copying(model):
        return model
    state = _state(model)
    kept = _COPIES.get(id(model))
    if kept is not None and kept[0]() is model and kept[1] == state:
        if kept[2] is model or _same_function(model, kept[2], sample):
            return kept[2]
    fast = _copy(model)
    if fast is not model and not _same_function(model, fast, sample):
        fast = model
    _COPIES.pop(id(model), None)
    _COPIES[id(model)] = (weakref.ref(model), state, fast)
    while len(_COPIES) > _KEPT:
        _COPIES.popitem(last=False)
    return fast


def _copy(model: nn.Module) -> nn.Module:
    try:
        fast = ChannelsLast(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    except Exception:  # a module deepcopy or .to() cannot handle: search with the model itself
        return model
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    return fast


def _same_function(model: nn.Module, fast: nn.Module, sample: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            expected, got = model(sample[:1]), fast(sample[:1])
        return expected.shape == got.shape and bool(
            torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * (1 + float(expected.abs().max()))))
    except Exception:  # the copy cannot run what the model runs
        return False


def _worth_copying(model: nn.Module) -> bool:
    tensors = list(model.parameters()) + list(model.buffers())
    return (not model.training and bool(tensors) and all(t.device.type == "cpu" for t in tensors)
            and any(isinstance(m, nn.Conv2d) for m in model.modules()))  # fmt: skip


def _state(model: nn.Module) -> tuple:
    """Changes whenever a weight or buffer is replaced or written in place (torch's version counter)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))
