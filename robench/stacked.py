"""K models of one architecture as one network: grouped convolutions and batched matrix products.

Why this and not torch.func.vmap over `functional_call`: both give each model its own weights, but
vmap's transforms run in Python for every operator of the forward, the backward and the Jacobian
penalty's double backward, and a small model on a large GPU is already bound by kernel launches.
Here the K models are one ordinary autograd graph with the launches of ONE model: a Conv2d of the K
models becomes one convolution with groups=K over their channels side by side, a Linear one
`baddbmm` over a (K, B, features) stack, element-wise layers act on the stack as it is. The models
never mix: member k's logits depend on member k's weights and inputs only, so the gradient of a
sum of per-member losses is each member's own gradient.

Supported layers (robench's `lenet`, `lenet5` and `mlp`): Normalize, Conv2d (zero padding),
Linear, ReLU, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout (after the flatten). Anything else
(BatchNorm: its running statistics and batch coupling) is refused by `stackable`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import Normalize

_ELEMENTWISE = (nn.ReLU, nn.Tanh)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def leaf_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in forward order, with their state-dict prefixes (nested Sequentials opened)."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) or module is model:
            continue
        if any(True for _ in module.children()):
            layers.append((name, module))  # a composite layer: refused by stackable()
            continue
        layers.append((name, module))
    return layers


def stackable(model: nn.Module) -> str | None:
    """None when `model` can train side by side; else why not (one phrase, for messages)."""
    if not isinstance(model, nn.Sequential):
        return "the model is not an nn.Sequential"
    flat = False
    for name, layer in leaf_layers(model):
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros" or flat:
                return f"layer {name} (a Conv2d with {layer.padding_mode} padding or after the flatten)"
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1:
                return f"layer {name} (Flatten from dim {layer.start_dim})"
            flat = True
        elif isinstance(layer, nn.Dropout):
            if not flat:
                return f"layer {name} (dropout before the flatten)"
        elif not isinstance(layer, (Normalize, nn.Linear, nn.Identity, *_ELEMENTWISE, *_POOLS)):
            return f"layer {name} ({type(layer).__name__})"
    return None


class StackedNet:
    """The K models' parameters as stacked leaf tensors, and their joint forward.

    Args:
        models: K models of one architecture (their own weights; dropout rates may differ, since
            the masks come from outside). They are read, not kept.
        device: where the stacked parameters live.

    `params` are the leaves an optimizer updates; `member_state(k)` gives model k's state dict back.
    Conv weights stack along the output channels (K*O, I, kh, kw), Linear weights as (K, O, I).
    """

    def __init__(self, models: list[nn.Module], device: torch.device | str = "cpu"):
        why = stackable(models[0])
        if why is not None:
            raise ValueError(f"cannot train side by side: {why}")
        self.k = len(models)
        self.template = models[0]
        self.layers = leaf_layers(models[0])
        self.params: list[torch.Tensor] = []
        self.keys: list[tuple[str, int]] = []  # (state-dict key, layer index) of each stacked tensor
        states = [m.state_dict() for m in models]
        for index, (name, layer) in enumerate(self.layers):
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            for pname, _ in layer.named_parameters(recurse=False):
                key = f"{name}.{pname}"
                parts = [s[key].detach().to(device=device, dtype=torch.float32) for s in states]
                tensor = torch.cat(parts) if isinstance(layer, nn.Conv2d) else torch.stack(parts)
                self.params.append(tensor.contiguous().requires_grad_(True))
                self.keys.append((key, index))
        self.buffers = {k: v.to(device) for k, v in models[0].named_buffers() if v is not None}
        self.dropout_layers = [i for i, (_, layer) in enumerate(self.layers) if isinstance(layer, nn.Dropout)]

    def member_view(self, tensor: torch.Tensor, index: int, k: int) -> torch.Tensor:
        """Member k's part of a tensor stacked like params[index] (the parameter or its momentum)."""
        if isinstance(self.layers[self.keys[index][1]][1], nn.Conv2d):
            rows = tensor.shape[0] // self.k
            return tensor[k * rows : (k + 1) * rows]
        return tensor[k]

    def members_of(self, tensor: torch.Tensor, index: int, members: list[int]) -> torch.Tensor:
        """A tensor stacked like params[index], keeping only `members` (in this order)."""
        return torch.stack([self.member_view(tensor, index, m) for m in members]).flatten(0, 1).contiguous() \
            if isinstance(self.layers[self.keys[index][1]][1], nn.Conv2d) else tensor[members].contiguous()

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's parameters as an ordinary state dict (views into the stack, detached)."""
        return {key: self.member_view(tensor.detach(), i, k) for i, ((key, _), tensor) in enumerate(zip(self.keys, self.params))}

    def select(self, members: list[int]) -> None:
        """Keep only these members (in this order): a diverged member leaves the group."""
        self.params = [self.members_of(t.detach(), i, members).requires_grad_(True) for i, t in enumerate(self.params)]
        self.k = len(members)

    def per_member(self, values: list[float], tensor_index: int) -> torch.Tensor:
        """A per-member scalar broadcast to the shape of stacked tensor `tensor_index` (weight decay)."""
        tensor = self.params[tensor_index]
        v = torch.tensor(values, dtype=tensor.dtype, device=tensor.device)
        if isinstance(self.layers[self.keys[tensor_index][1]][1], nn.Conv2d):
            v = v.repeat_interleave(tensor.shape[0] // self.k)
            return v.view(-1, *([1] * (tensor.dim() - 1)))
        return v.view(-1, *([1] * (tensor.dim() - 1)))

    def __call__(self, x: torch.Tensor, masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (K, B, C) of the K models on their inputs x (K, B, ...), pixels in [0, 1].

        masks: dropout layer index -> (K, B, features) scaled keep-masks (train mode); None: eval.
        """
        k, batch = x.shape[0], x.shape[1]
        grouped = False  # layout: False = (K, B, ...), True = (B, K*C, H, W) for convolutions
        params = iter(self.params)
        for index, (name, layer) in enumerate(self.layers):
            if isinstance(layer, Normalize):
                x = (x - self.buffers[f"{name}.mean"]) / self.buffers[f"{name}.std"]
            elif isinstance(layer, nn.Conv2d):
                if not grouped:
                    x = x.transpose(0, 1).reshape(batch, k * x.shape[2], *x.shape[3:])
                    grouped = True
                weight = next(params)
                bias = next(params) if layer.bias is not None else None
                x = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups * k)
            elif isinstance(layer, _POOLS):
                if grouped:
                    x = layer(x)
                else:
                    shape = x.shape
                    x = layer(x.reshape(k * batch, *shape[2:]))
                    x = x.reshape(k, batch, *x.shape[1:])
            elif isinstance(layer, nn.Flatten):
                x = x.reshape(batch, k, -1).transpose(0, 1) if grouped else x.flatten(2)
                grouped = False
            elif isinstance(layer, nn.Linear):
                weight = next(params)
                bias = next(params) if layer.bias is not None else None
                x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)) if bias is not None \
                    else torch.bmm(x, weight.transpose(1, 2))  # fmt: skip
            elif isinstance(layer, nn.Dropout):
                if masks is not None and index in masks:
                    x = x * masks[index]
            elif isinstance(layer, _ELEMENTWISE):
                x = layer(x)
        return x


def dropout_shapes(model: nn.Module, example: torch.Tensor) -> dict[int, tuple[int, ...]]:
    """Layer index -> the per-example shape its dropout sees, from one forward of one example."""
    layers = leaf_layers(model)
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: shapes.__setitem__(i, tuple(a[0].shape[1:])))
             for i, (_, layer) in enumerate(layers) if isinstance(layer, nn.Dropout)]  # fmt: skip
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was)
        for hook in hooks:
            hook.remove()
    return shapes
