"""Training-time defenses beyond JR: the adversarial examples and losses of PGD adversarial training
(Madry et al. 2018), TRADES (Zhang et al. 2019) and input-gradient regularization (double
backpropagation: Drucker & LeCun 1992; Ross & Doshi-Velez 2018).

Inputs are pixels in [0, 1] (robench models normalize inside), so every projection is onto the
eps-ball around x *and* the [0, 1] box, in pixel space. The attacks differentiate with respect to the
input alone (`torch.autograd.grad`), so they leave no `.grad` on the parameters and freeze nothing
the optimizer needs; they run with the model in eval mode (no dropout noise in the attack's
gradient), and restore its mode.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the with-block, its own mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the L-inf ball of radius eps around x, then the [0, 1] pixel box."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Madry's L-inf PGD: uniform random start in the eps-ball, `steps` signed-gradient steps of
    2.5 * eps / steps on the cross-entropy, each projected onto the ball and the box."""
    step = 2.5 * eps / steps
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None \
        else torch.rand_like(x)  # fmt: skip
    x_adv = project(x + (2 * noise - 1) * eps, x, eps)
    with eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = project(x_adv.detach() + step * grad.sign(), x, eps)
    return x_adv.detach()


def trades_examples(model: nn.Module, x: torch.Tensor, eps: float, steps: int, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """TRADES's inner maximization, as the authors' reference code: from x + 0.001 * N(0, 1), `steps`
    signed-gradient steps (here 2.5 * eps / steps) on KL(f(x) || f(x_adv)), projected each time."""
    step = 2.5 * eps / steps
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None \
            else torch.randn_like(x)  # fmt: skip
        x_adv = project(x + 0.001 * noise, x, eps)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project(x_adv.detach() + step * grad.sign(), x, eps)
    return x_adv.detach()


def trades_loss(logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)), the KL averaged over the batch (batchmean)."""
    kl = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, y) + beta * kl


def input_gradient_sq(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      input_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(logits, ||d CE_i / d x_i||^2 per example), differentiable (create_graph) for the IGR penalty.

    The examples of a batch are independent (no batch norm in robench's models), so one backward pass
    of the summed CE gives every example's own input gradient. `input_scale` (the input std, for
    normalized units) turns d/d pixel into d/d normalized input, as for JR.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, create_graph=True)
    if input_scale is not None:
        grad = grad * input_scale
    return logits, grad.flatten(1).pow(2).sum(1)
