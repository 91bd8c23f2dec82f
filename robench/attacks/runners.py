"""Running an attack spec on a batch: per-example accuracy at one ε (fixed-ε attacks) or minimal distances
(minimization attacks), whatever the engine, every adversarial re-checked (`robench.attacks.verify`)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import RobenchError
from .foolbox_engine import _seeded, _torch_module
from .specs import AttackSpec
from .verify import _clean_correct, verify_adversarials


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off requires_grad on all parameters, restoring each flag afterwards (also on errors).

    Foolbox (through eagerpy) calls loss.backward() for input gradients; without this every attack
    step would also compute and accumulate the parameters' .grad: wasted time and memory, and
    gradients leaking into any training that shares the model.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def fixed_eps_accuracy(
    spec: AttackSpec, fmodel: Any, images: torch.Tensor, labels: torch.Tensor, eps: float, *, seed: int,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Per-example accuracy under a fixed-ε attack at one ε: float (N,) on CPU, 1.0 robust, 0.0 broken.

    With repeats > 1 it is the mean over independent draws (expected accuracy under noise, not the
    worst case). Examples misclassified on clean input are always 0.0 (Foolbox's convention, enforced
    here because noise can repair a misclassified digit), and ε = 0 is exactly clean correctness.
    Foolbox's success flag is not used: every returned image is re-checked (`verify_adversarials`).

    Args:
        spec: a spec of kind "fixed".
        fmodel: from `foolbox_model`.
        images: float images in [0, 1] on fmodel.device; labels: int64 on the same device.
        eps: the perturbation size, in the spec's norm.
        seed: with `indices`, seeds each example's random start and noise (see `example_generators`).
        indices: the examples' indices in the test set (default 0..N-1); outcomes depend on
            (seed, index) only, never on which examples share the call.
    """
    if spec.kind != "fixed":
        raise RobenchError(f"attack {spec.name!r} is a {spec.kind} attack, not a fixed-eps one")
    if not math.isfinite(eps) or eps < 0:
        raise RobenchError(f"eps must be finite and >= 0, got {eps}")
    correct = _clean_correct(fmodel, images, labels)
    if eps == 0 or len(labels) == 0:
        return correct.float().cpu()
    robust = torch.zeros(len(labels), dtype=torch.float32, device=correct.device)
    module = _torch_module(fmodel)
    if indices is None:
        indices = torch.arange(len(labels))
    if spec.engine == "torchattacks":
        from .torchattacks_engine import adversarials

        with frozen_parameters(module), torch.enable_grad():
            for _ in range(spec.repeats):
                advs = adversarials(spec, module, images, labels, float(eps), seed=seed, indices=indices)
                broken = verify_adversarials(fmodel, images, advs, labels, float(eps), spec.norm)
                robust += (correct & ~broken).float()
        return (robust / spec.repeats).cpu()
    attack = spec.build()
    with _seeded(spec, attack, seed, indices, len(labels)), frozen_parameters(module), \
            torch.enable_grad():  # fmt: skip
        for _ in range(spec.repeats):
            _, clipped, _ = attack(fmodel, images, labels, epsilons=float(eps))
            broken = verify_adversarials(fmodel, images, clipped.detach(), labels, float(eps), spec.norm)
            robust += (correct & ~broken).float()
    return (robust / spec.repeats).cpu()


def minimal_distances(
    spec: AttackSpec, fmodel: Any, images: torch.Tensor, labels: torch.Tensor, *, seed: int,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Per-example smallest adversarial perturbation a minimization attack finds, in the spec's norm.

    Returns float64 (N,) on CPU: 0.0 where the clean prediction is already wrong, +inf where the
    attack found nothing. Adversarial-ness is decided here (`verify_adversarials`): where Foolbox
    3.3.4's CW finds nothing it returns an all-zero image, which the model may well misclassify, so
    Foolbox's own success flag would report a fake adversarial at ||x||.

    Args:
        spec: a spec of kind "minimization".
        fmodel, images, labels, seed, indices: as for `fixed_eps_accuracy`.
    """
    if spec.kind != "minimization":
        raise RobenchError(f"attack {spec.name!r} is a {spec.kind} attack, not a minimization one")
    correct = _clean_correct(fmodel, images, labels)
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.float64)
    attack = spec.build()
    with _seeded(spec, attack, seed, indices, len(labels)), frozen_parameters(_torch_module(fmodel)), \
            torch.enable_grad():  # fmt: skip
        advs, _, _ = attack(fmodel, images, labels, epsilons=None)
    advs = advs.detach()
    fooled = verify_adversarials(fmodel, images, advs, labels, None, spec.norm)
    # CW's "nothing found" marker (its tanh parametrization never yields an exactly all-zero image).
    blank = (advs.flatten(1) == 0).all(1) & (images.flatten(1) != 0).any(1)
    delta = (advs.double() - images.double()).flatten(1)
    norms = delta.abs().amax(1) if spec.norm == "linf" else delta.norm(dim=1)
    inf = torch.full_like(norms, math.inf)
    distances = torch.where(fooled & ~blank, norms, inf)
    return torch.where(correct, distances, torch.zeros_like(norms)).cpu()


def accuracy_from_distances(distances: torch.Tensor, eps: float) -> float:
    """Accuracy at ε from minimal distances: the fraction whose distance exceeds ε."""
    if len(distances) == 0:
        return float("nan")
    return (distances > eps).double().mean().item()
