"""The Foolbox engine: attack instances from a spec, the Foolbox model wrapper, and per-example randomness
for Foolbox's gradient-descent and additive-noise attacks (whose draws Foolbox makes for the whole batch)."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from torch import nn

from ..errors import RobenchError
from .specs import NORMS, AttackSpec, _check_type


def _foolbox_class(name: str) -> type | None:
    import foolbox.attacks

    cls = getattr(foolbox.attacks, name, None)
    return cls if isinstance(cls, type) else None


def supports_eot(class_name: str) -> bool:
    """Foolbox's gradient-descent attacks (FGSM, PGD) take their gradients through `value_and_grad`,
    which `average_gradients` replaces."""
    from foolbox.attacks.gradient_descent_base import L2BaseGradientDescent, LinfBaseGradientDescent

    cls = _foolbox_class(class_name)
    return cls is not None and issubclass(cls, (LinfBaseGradientDescent, L2BaseGradientDescent))


def average_gradients(attack: Any, samples: int) -> None:
    """Expectation over Transformation (Athalye et al. 2018): every gradient step of this attack instance
    averages `samples` draws of the loss and its input gradient (a randomized model gives a new draw per
    forward pass), as AutoAttack's `rand` version does with 20."""
    if samples <= 1:
        return
    single = attack.value_and_grad

    def averaged(loss_fn: Any, x: Any) -> Any:
        total_loss, total_grad = single(loss_fn, x)
        for _ in range(samples - 1):
            loss, grad = single(loss_fn, x)
            total_loss, total_grad = total_loss + loss, total_grad + grad
        return total_loss / samples, total_grad / samples

    attack.value_and_grad = averaged


def _per_example_class(class_name: str) -> bool:
    """Gradient-descent (FGSM, PGD) and additive-noise attacks treat each example on its own; robench
    gives them per-example random draws (`per_example_randomness`). Everything else runs in CHUNKs."""
    from foolbox.attacks.additive_noise import BaseAdditiveNoiseAttack
    from foolbox.attacks.gradient_descent_base import L2BaseGradientDescent, LinfBaseGradientDescent

    cls = _foolbox_class(class_name)
    return cls is not None and issubclass(cls, (LinfBaseGradientDescent, L2BaseGradientDescent,
                                                BaseAdditiveNoiseAttack))  # fmt: skip


def _check_foolbox(class_name: Any, params: dict, norm: Any, where: str) -> str:
    """Validate against Foolbox itself; returns the kind derived from the class."""
    from foolbox.attacks.base import FixedEpsilonAttack, MinimizationAttack

    cls = _foolbox_class(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise RobenchError(f"{where}: unknown Foolbox attack class {class_name!r}")
    signature = inspect.signature(cls)
    accepted = {
        name for name, p in signature.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }  # fmt: skip
    bad = sorted(set(params) - accepted)
    if bad:
        choices = ", ".join(sorted(accepted)) or "none"
        raise RobenchError(f"{where}: {class_name} takes no parameter {bad[0]!r} (accepted: {choices})")
    for name, value in params.items():
        _check_type(value, signature.parameters[name].default, f"{where}: {class_name} parameter {name!r}")
    if norm not in NORMS.values():
        raise RobenchError(f"{where}: norm must be one of {', '.join(NORMS.values())}, got {norm!r}")
    try:
        distance = cls(**params).distance
    except (TypeError, ValueError) as exc:
        raise RobenchError(f"{where}: {class_name}({params}) fails: {exc}") from None
    if NORMS.get(getattr(distance, "p", None)) != norm:
        raise RobenchError(f"{where}: norm {norm!r} does not match {class_name}'s distance ({distance})")
    if issubclass(cls, MinimizationAttack):
        return "minimization"
    if issubclass(cls, FixedEpsilonAttack):
        return "fixed"
    raise RobenchError(f"{where}: {class_name} is neither a fixed-eps nor a minimization attack")


def foolbox_model(model: nn.Module, device: str | torch.device) -> Any:
    """Wrap a model taking [0, 1] images for Foolbox. The device is explicit: Foolbox's default is cuda:0."""
    import foolbox

    return foolbox.PyTorchModel(model.eval(), bounds=(0, 1), device=device)


def _torch_module(fmodel: Any) -> nn.Module:
    """The nn.Module inside a Foolbox PyTorchModel.

    Foolbox 3.3.4 keeps no attribute pointing at it: `fmodel._model` is a closure calling the module,
    which is read from that closure's cell named "model".
    """
    inner = getattr(fmodel, "_model", None)
    if isinstance(inner, nn.Module):
        return inner
    code, cells = getattr(inner, "__code__", None), getattr(inner, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars if code else (), cells):
        if name == "model" and isinstance(cell.cell_contents, nn.Module):
            return cell.cell_contents
    raise RobenchError("cannot find the torch module inside the Foolbox model; build it with foolbox_model()")


def example_generators(seed: int, indices: torch.Tensor | None, count: int, stream: int) -> list:
    """One numpy Generator per example, from (seed, example index, stream): draws that do not depend on
    which other examples share the batch, so --batch-size and sharding never change a number."""
    import numpy as np

    idx = range(count) if indices is None else indices.tolist()
    return [np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(i), stream]) for i in idx]


class _ExampleRandom:
    """Per-example replacements for the random draws of Foolbox's PGD starts and additive noise.

    Foolbox draws them from torch's global RNG for the whole batch at once (through eagerpy); these
    draw the same distributions (uniform in the L∞ ball; uniform in the L2 ball by Voelker et al.'s
    method, as Foolbox does; a standard normal for noise) from each example's own generator. Every call
    starts a new stream, so the repeats of noise are independent and every ε reuses the first draws.
    """

    def __init__(self, seed: int, indices: torch.Tensor | None, count: int):
        self.seed, self.indices, self.count, self.calls = seed, indices, count, 0

    def _draw(self, x: Any, per_example: int, normal: bool) -> torch.Tensor:
        import numpy as np

        gens = example_generators(self.seed, self.indices, self.count, self.calls)
        self.calls += 1
        draw = (lambda g: g.standard_normal(per_example)) if normal else (lambda g: g.random(per_example))
        values = np.stack([draw(g) for g in gens]) if gens else np.zeros((0, per_example))
        raw = x.raw if hasattr(x, "raw") else x
        return torch.from_numpy(values).to(device=raw.device, dtype=raw.dtype)

    def install(self, attack: Any) -> None:
        """Bind the per-example draws to this attack instance (class untouched)."""
        import eagerpy as ep
        from foolbox.attacks.additive_noise import BaseAdditiveNoiseAttack
        from foolbox.attacks.gradient_descent_base import L2BaseGradientDescent, LinfBaseGradientDescent

        def numel(x):
            return int(x.raw[0].numel()) if len(x.raw) else 1

        if isinstance(attack, LinfBaseGradientDescent):
            def linf_start(x0, epsilon):
                u = self._draw(x0, numel(x0), normal=False).reshape(x0.shape)
                return x0 + ep.astensor(u * 2 - 1) * epsilon

            attack.get_random_start = linf_start
        elif isinstance(attack, L2BaseGradientDescent):
            def l2_start(x0, epsilon):
                n = numel(x0)
                g = self._draw(x0, n + 2, normal=True)  # uniform on the (n+1)-sphere, keep n coordinates
                ball = (g / g.norm(dim=1, keepdim=True).clamp_min(1e-12))[:, :n].reshape(x0.shape)
                return x0 + ep.astensor(ball) * epsilon

            attack.get_random_start = l2_start
        elif isinstance(attack, BaseAdditiveNoiseAttack):
            attack.sample_noise = lambda x: ep.astensor(self._draw(x, numel(x), normal=True).reshape(x.shape))


@contextlib.contextmanager
def _seeded(spec: AttackSpec, attack: Any, seed: int, indices: torch.Tensor | None, count: int):
    """Per-example draws where the class allows; else torch's global RNG, forked and seeded from
    (seed, first index), so the caller's RNG is untouched (the caller runs such attacks per CHUNK)."""
    if spec.per_example:
        _ExampleRandom(seed, indices, count).install(attack)
        yield
        return
    with forked_rng(seed, indices, 1_000_003):
        yield


@contextlib.contextmanager
def forked_rng(seed: int, indices: torch.Tensor | None, multiplier: int):
    """torch's global RNG (CPU and the current GPU) forked for the block and seeded from (seed, first index):
    the block's draws repeat on a rerun, and the caller's RNG is untouched. `multiplier` keeps streams of
    different uses apart."""
    first = int(indices[0]) if indices is not None and len(indices) else 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * multiplier + first) % (2**63))
        yield
