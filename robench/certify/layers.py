"""A model as a flat list of operations the bound engines understand: affine maps and three nonlinearities.

Why a separate step: IBP, CROWN and the MILP all walk the same network, and each needs to know, per layer,
"is it affine (then how do I push an interval or a linear bound through it), or a ReLU / Tanh / max-pool".
Consecutive affine layers (Normalize, Flatten, Linear, Conv2d, AvgPool2d, BatchNorm in eval mode, Dropout in
eval mode) are merged into one `AffineOp`, so the engines see `affine, nonlinear, affine, ...`.

The model is copied, put in eval mode (certification is about the deployed network: dropout off, batch
norm with its running statistics) and cast to the engines' dtype; the caller's model is never touched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobenchError
from ..models import Normalize

AFFINE_TYPES = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity,
                nn.BatchNorm1d, nn.BatchNorm2d, Normalize)  # fmt: skip  (GeneratorDropout is an nn.Dropout)
NONLINEAR_TYPES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.MaxPool2d: "maxpool"}
SUPPORTED = "Linear, Conv2d, ReLU, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout, BatchNorm1d/2d, Normalize, Identity"


def flatten_layers(model: nn.Module, who: str = "certify") -> list[nn.Module]:
    """The leaf layers of a (possibly nested) nn.Sequential, in order; a single supported layer is a list of one.

    Raises RobenchError naming the first layer no engine can bound, and its position in the flat list.
    """
    leaves = _leaves(model)
    for position, layer in enumerate(leaves):
        if not isinstance(layer, AFFINE_TYPES) and type(layer) not in NONLINEAR_TYPES:
            hint = "" if isinstance(model, nn.Sequential) else " (the model must be an nn.Sequential)"
            raise RobenchError(f"{who}: unsupported layer {type(layer).__name__} at position {position}{hint} "
                               f"(supported: {SUPPORTED})")  # fmt: skip
        _check_variant(layer, position, who)
    return leaves


def _leaves(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _leaves(child)]
    return [model]


def _check_variant(layer: nn.Module, position: int, who: str) -> None:
    """Reject the settings of supported layer types that the engines do not model."""
    name = type(layer).__name__
    problem = None
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        problem = f"padding_mode={layer.padding_mode!r}"
    elif isinstance(layer, nn.Flatten) and (layer.start_dim != 1 or layer.end_dim != -1):
        problem = "a flatten other than start_dim=1, end_dim=-1"
    elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.running_var is None:
        problem = "no running statistics (track_running_stats=False)"
    elif isinstance(layer, nn.MaxPool2d) and (layer.ceil_mode or layer.return_indices):
        problem = "ceil_mode or return_indices"
    elif isinstance(layer, nn.AvgPool2d) and layer.ceil_mode:
        problem = "ceil_mode"
    if problem:
        raise RobenchError(f"{who}: unsupported layer {name} at position {position} ({problem})")


def abs_linear(layer: nn.Module, rad: torch.Tensor) -> torch.Tensor:
    """|A| rad for the linear part A of an affine layer: the radius of an interval after the layer (IBP)."""
    if isinstance(layer, nn.Linear):
        return F.linear(rad, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, Normalize):
        return rad / layer.std.abs()
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = _batchnorm_scale(layer)
        return rad * scale.abs().view(1, -1, *([1] * (rad.dim() - 2)))
    return layer(rad)  # Flatten, Dropout (eval), Identity, AvgPool2d: nonnegative coefficients already


def _batchnorm_scale(layer: nn.Module) -> torch.Tensor:
    scale = torch.rsqrt(layer.running_var + layer.eps)
    return scale * layer.weight if layer.weight is not None else scale


def transpose(layer: nn.Module, v: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """A^T v for the linear part A of one affine layer, v of shape (N, *out_shape) -> (N, *in_shape).

    Written out where it is one call (a forward pass on zeros just to differentiate it would double the cost
    of CROWN's backward pass); average pooling goes through autograd, which is exact for a linear map.
    """
    if isinstance(layer, nn.Linear):
        return v @ layer.weight
    if isinstance(layer, nn.Conv2d):
        return torch.nn.grad.conv2d_input((len(v), *in_shape), layer.weight, v, layer.stride, layer.padding,
                                          layer.dilation, layer.groups)  # fmt: skip
    if isinstance(layer, Normalize):
        return v / layer.std
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return v * _batchnorm_scale(layer).view(1, -1, *([1] * (v.dim() - 2)))
    if isinstance(layer, (nn.Flatten, nn.Dropout, nn.Identity)):
        return v.reshape(len(v), *in_shape)
    with torch.enable_grad():
        zero = v.new_zeros((len(v), *in_shape), requires_grad=True)
        (grad,) = torch.autograd.grad(layer(zero), zero, v)
    return grad


@dataclass
class AffineOp:
    """Consecutive affine layers as one map z -> A z + b on a fixed per-example shape."""

    layers: list[nn.Module]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    probe: torch.Tensor  # a scalar of the engines' dtype and device
    shapes: list[tuple[int, ...]]  # each layer's input shape (one example)
    kind: str = "affine"
    _bias: torch.Tensor | None = field(default=None, repr=False)
    _dense: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def bias(self, like: torch.Tensor) -> torch.Tensor:
        """b = the map at 0, shape (1, *out_shape)."""
        if self._bias is None:
            with torch.no_grad():
                self._bias = self.forward(like.new_zeros((1, *self.in_shape)))
        return self._bias

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """IBP: the centre goes through each layer, the radius through its |A| (Gowal et al. 2018)."""
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        for layer in self.layers:
            mid, rad = layer(mid), abs_linear(layer, rad)
        return mid - rad, mid + rad

    def backward(self, lA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lA A, lA . b): a linear function of the output, lA (B, S, *out), as one of the input."""
        batch, specs = lA.shape[:2]
        const = torch.bmm(lA.flatten(2), self.bias(lA).flatten().expand(batch, -1).unsqueeze(2)).squeeze(2)
        flat = lA.reshape(batch * specs, *self.out_shape)
        for layer, shape in zip(reversed(self.layers), reversed(self.shapes)):
            flat = transpose(layer, flat, shape)
        return flat.view(batch, specs, *self.in_shape), const

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) on flattened shapes, W of shape (out_dim, in_dim): the map applied to the identity (for the MILP)."""
        n_in = math.prod(self.in_shape)
        eye = torch.eye(n_in, dtype=self.probe.dtype, device=self.probe.device).view(n_in, *self.in_shape)
        bias = self.bias(self.probe)
        with torch.no_grad():
            columns = self.forward(eye) - bias
        return columns.reshape(n_in, -1).T.contiguous(), bias.flatten()


@dataclass
class NonlinearOp:
    """ReLU, Tanh or MaxPool2d (its module kept for the window geometry), elementwise or per window."""

    kind: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All three are monotone nondecreasing in each input, so bounds map to bounds."""
        return self.module(lower), self.module(upper)


def build_ops(model: nn.Module, in_shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device,
              who: str = "certify") -> list[AffineOp | NonlinearOp]:  # fmt: skip
    """The model as [AffineOp | NonlinearOp], on a copy in eval mode, cast to dtype on device.

    Args:
        model: an nn.Sequential (nested ones are flattened) of the layers in SUPPORTED.
        in_shape: one example's shape, e.g. (1, 28, 28).
        dtype, device: where the engines compute (float64 by default in `certify`, see its docstring).
        who: the function named in error messages.
    """
    layers = flatten_layers(copy.deepcopy(model), who)
    ops: list[AffineOp | NonlinearOp] = []
    shape = tuple(in_shape)
    probe = torch.zeros((1, *shape), dtype=dtype, device=device)
    for layer in layers:
        layer = layer.to(device=device, dtype=dtype).eval()
        with torch.no_grad():
            out = layer(probe)
        out_shape = tuple(out.shape[1:])
        kind = NONLINEAR_TYPES.get(type(layer))
        if kind is not None:
            ops.append(NonlinearOp(kind, layer, shape, out_shape))
        elif ops and isinstance(ops[-1], AffineOp):
            ops[-1].layers.append(layer)
            ops[-1].shapes.append(shape)
            ops[-1].out_shape = out_shape
        else:
            ops.append(AffineOp([layer], shape, out_shape, probe.new_zeros(()), [shape]))
        probe, shape = out, out_shape
    return ops
