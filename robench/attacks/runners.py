"""Running an attack spec on a batch: per-example accuracy at one ε (fixed-ε attacks) or minimal distances
(minimization attacks), whatever the engine, every adversarial re-checked (`robench.attacks.verify`)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import RobenchError
from .failure import PathTracer, merge
from .fast_copy import attack_model
from .foolbox_engine import _seeded, _torch_module, average_gradients, foolbox_model, forked_rng
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


@dataclass(frozen=True)
class Outcome:
    """What one fixed-ε attack call gives: per-example accuracy (float (N,) on CPU, 1.0 robust, 0.0 broken)
    and, for traced attacks, the indicators of attack failure of the call (`robench.attacks.failure`)."""

    robust: torch.Tensor
    failure: dict = field(default_factory=dict)


def fixed_eps_accuracy(
    spec: AttackSpec, fmodel: Any, images: torch.Tensor, labels: torch.Tensor, eps: float, *, seed: int,
    indices: torch.Tensor | None = None, surrogate: Any = None,
) -> torch.Tensor:  # fmt: skip
    """Per-example accuracy under a fixed-ε attack at one ε: float (N,) on CPU, 1.0 robust, 0.0 broken.

    With repeats > 1 it is the mean over independent draws (expected accuracy under noise, not the
    worst case). Examples misclassified on clean input are always 0.0 (Foolbox's convention, enforced
    here because noise can repair a misclassified digit), and ε = 0 is exactly clean correctness.
    Foolbox's success flag is not used: every returned image is re-checked (`verify_adversarials`), by
    the majority of `spec.votes` forward passes for a randomized model.

    Args:
        spec: a spec of kind "fixed" (or its `variant` with EOT, votes, a surrogate).
        fmodel: from `foolbox_model`.
        images: float images in [0, 1] on fmodel.device; labels: int64 on the same device.
        eps: the perturbation size, in the spec's norm.
        seed: with `indices`, seeds each example's random start and noise (see `example_generators`).
        indices: the examples' indices in the test set (default 0..N-1); outcomes depend on
            (seed, index) only, never on which examples share the call.
        surrogate: a Foolbox model whose gradients a gradient attack follows instead of fmodel's (a
            transfer attack); every adversarial is still re-checked on fmodel.
    """
    return fixed_eps_outcomes(spec, fmodel, images, labels, eps, seed=seed, indices=indices, surrogate=surrogate).robust


def fixed_eps_outcomes(
    spec: AttackSpec, fmodel: Any, images: torch.Tensor, labels: torch.Tensor, eps: float, *, seed: int,
    indices: torch.Tensor | None = None, surrogate: Any = None,
) -> Outcome:  # fmt: skip
    """`fixed_eps_accuracy` with the indicators of attack failure of traced attacks (`AttackSpec.traced`)."""
    if spec.kind != "fixed":
        raise RobenchError(f"attack {spec.name!r} is a {spec.kind} attack, not a fixed-eps one")
    if not math.isfinite(eps) or eps < 0:
        raise RobenchError(f"eps must be finite and >= 0, got {eps}")
    with _model_randomness(spec, seed, indices):
        correct = _clean_correct(fmodel, images, labels, spec.votes)
        if eps == 0 or len(labels) == 0:
            return Outcome(correct.float().cpu())
        indices = torch.arange(len(labels)) if indices is None else indices
        attacked = searching_module(spec, fmodel, surrogate, images)
        robust = torch.zeros(len(labels), dtype=torch.float32, device=correct.device)
        failures = []
        attack = spec.build() if spec.engine == "foolbox" else None  # one instance: its repeats draw anew
        if attack is not None:
            average_gradients(attack, spec.eot)
        seeded = _seeded(spec, attack, seed, indices, len(labels)) if attack is not None else contextlib.nullcontext()
        with seeded, frozen_parameters(attacked), torch.enable_grad():
            for _ in range(spec.repeats):
                tracer = PathTracer(attacked, images, labels, eps, spec.norm) if spec.traced else None
                advs = _adversarials(spec, attack, tracer or attacked, images, labels, float(eps), seed, indices, tracer)
                broken = verify_adversarials(fmodel, images, advs, labels, float(eps), spec.norm, votes=spec.votes)
                if tracer is not None:
                    on_path = tracer.found & verify_adversarials(fmodel, images, tracer.adversarial, labels, float(eps),
                                                                 spec.norm, votes=spec.votes)  # fmt: skip
                    failures.append(tracer.indicators(correct, broken & correct, on_path & correct))
                    broken |= on_path
                robust += (correct & ~broken).float()
    return Outcome((robust / spec.repeats).cpu(), merge(failures))


def searching_module(spec: AttackSpec, fmodel: Any, surrogate: Any, sample: torch.Tensor) -> nn.Module:
    """The module an attack searches with: the surrogate's for a gradient attack given one, else the model's,
    as its channels_last copy where that is faster (`fast_copy.attack_model`, checked on `sample`)."""
    searched = surrogate if surrogate is not None and spec.uses_gradients else fmodel
    return attack_model(_torch_module(searched), sample, spec.votes)


def _adversarials(spec, attack, model, images, labels, eps, seed, indices, tracer) -> torch.Tensor:
    """The images the spec's engine returns for one call (unchecked): a Foolbox `attack` instance (seeded
    by the caller), or a fresh torchattacks one."""
    if spec.engine == "torchattacks":
        from .torchattacks_engine import adversarials

        return adversarials(spec, model, images, labels, eps, seed=seed, indices=indices, tracer=tracer)
    if spec.engine == "robench":
        from .robench_engine import adversarials

        return adversarials(spec, model, images, labels, eps, seed=seed, indices=indices)
    _, clipped, _ = attack(foolbox_model(model, images.device), images, labels, epsilons=eps)
    return clipped.detach()


@contextlib.contextmanager
def _model_randomness(spec: AttackSpec, seed: int, indices: torch.Tensor | None):
    """For a randomized model (re-checked by majority), its draws come from torch's RNG forked and seeded
    from (seed, first index): a rerun gives the same numbers and the caller's RNG is untouched."""
    if spec.votes <= 1:
        yield
        return
    with forked_rng(seed, indices, 1_000_033):
        yield


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
    correct = _clean_correct(fmodel, images, labels, spec.votes)
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.float64)
    attack = spec.build()
    module = _torch_module(fmodel)
    searched = attack_model(module, images, spec.votes)
    searched_fmodel = fmodel if searched is module else foolbox_model(searched, images.device)
    with _seeded(spec, attack, seed, indices, len(labels)), frozen_parameters(module), torch.enable_grad():
        advs, _, _ = attack(searched_fmodel, images, labels, epsilons=None)
    advs = advs.detach()
    fooled = verify_adversarials(fmodel, images, advs, labels, None, spec.norm, votes=spec.votes)
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
