"""The torchattacks engine: APGD-CE, APGD-T, FAB-T and Square (ported by torchattacks from the AutoAttack
authors' code) as robench attack specs with `engine = "torchattacks"`.

torchattacks builds an attack around a model and reseeds torch's global RNG inside each call. robench
therefore builds a fresh attack per call, runs it inside `torch.random.fork_rng` (the caller's RNG is
never touched) and gives each call its own seed. Two kinds of class:

- APGD, APGD-T and FAB treat every example on its own except for their random start, drawn for the whole
  batch with `torch.rand`/`torch.randn` in `attack_single_run`. robench wraps that method and, for its
  duration, answers exactly that draw per example, from (seed, example index, draw count): outcomes
  then depend on the example alone, so APGD may run on any subset (the cascade's survivors) in
  batches of any size.
- Everything else (Square: its random squares come from one stream for the whole batch) runs on fixed
  chunks of the image index, seeded from (seed, chunk start); see `robench.attacks.CHUNK`.

Adversarials are never taken on trust: the caller re-checks each one (`verify_adversarials`).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import RobenchError

NORMS = {"Linf": "linf", "L2": "l2"}
# Classes whose only coupling is the random start robench takes over (FAB: only with restarts > 1).
PER_EXAMPLE = ("APGD", "APGDT", "FAB")
SINGLE_RUNS = ("attack_single_run", "attack_single_run_targeted")  # where those classes draw their start
RESERVED = ("model", "eps", "seed", "verbose")  # robench sets these per call


def _class(name: Any) -> type | None:
    import torchattacks
    from torchattacks.attack import Attack

    cls = getattr(torchattacks, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, Attack) else None


def check_class(name: Any, params: dict, norm: Any, where: str) -> str:
    """Validate a torchattacks spec against the class's own signature; returns its kind ("fixed")."""
    from .specs import _check_type

    cls = _class(name)
    if cls is None:
        raise RobenchError(f"{where}: unknown torchattacks attack class {name!r}")
    signature = inspect.signature(cls.__init__)
    accepted = {p for p in signature.parameters if p not in ("self", *RESERVED)}
    if "eps" not in signature.parameters:
        raise RobenchError(f"{where}: {name} takes no eps: robench runs only fixed-eps torchattacks attacks")
    bad = sorted(set(params) - accepted)
    if bad:
        hint = " (robench sets it per call)" if bad[0] in RESERVED else ""
        raise RobenchError(f"{where}: {name} takes no parameter {bad[0]!r}{hint} (accepted: {', '.join(sorted(accepted))})")
    for key, value in params.items():
        _check_type(value, signature.parameters[key].default, f"{where}: {name} parameter {key!r}")
    declared = params.get("norm", signature.parameters["norm"].default if "norm" in signature.parameters else None)
    if NORMS.get(declared) is None:
        raise RobenchError(f"{where}: {name} does not declare an L-inf or L2 norm (norm = {declared!r})")
    if NORMS[declared] != norm:
        raise RobenchError(f"{where}: norm {norm!r} does not match {name}'s norm {declared!r}")
    return "fixed"


def installed() -> bool:
    """Whether torchattacks can be imported (robench declares it; a user may have removed it)."""
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        return False
    return True


def supports_eot(name: str) -> bool:
    """Classes that average gradient samples themselves (`eot_iter`: APGD, APGD-T)."""
    cls = _class(name) if installed() else None
    return cls is not None and "eot_iter" in inspect.signature(cls.__init__).parameters


def per_example(name: str) -> bool:
    return name in PER_EXAMPLE


class _Fingerprints:
    """Which test-set example each row of a tensor is: rows of a subset are matched to the call's
    images by a random projection (exact copies of the same pixels give the same value)."""

    def __init__(self, images: torch.Tensor, indices: torch.Tensor):
        gen = torch.Generator().manual_seed(0)
        self.w = torch.randn(images[0].numel(), generator=gen, dtype=torch.float64).to(images.device)
        self.keys = images.flatten(1).double() @ self.w
        self.indices = indices.tolist()

    def positions(self, rows: torch.Tensor) -> list[int]:
        """Each row's position in the call's images."""
        keys = rows.flatten(1).double() @ self.w
        return (keys[:, None] - self.keys[None, :]).abs().argmin(1).tolist()

    def lookup(self, rows: torch.Tensor) -> list[int]:
        return [self.indices[j] for j in self.positions(rows)]


@contextlib.contextmanager
def _per_example_draws(shape: torch.Size, indices: list[int], seed: int, counts: dict) -> Iterator[None]:
    """For the block's duration, `torch.rand(shape)` and `torch.randn(shape)` (the batch's random
    start) are drawn per example from (seed, index, how many draws that example had); other calls go
    to torch as usual."""
    rand, randn = torch.rand, torch.randn

    def draw(original, *args, **kwargs):
        size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
        if tuple(size) != tuple(shape) or kwargs.get("generator") is not None:
            return original(*args, **kwargs)
        rows = []
        for i in indices:
            count = counts.get(i, 0)
            counts[i] = count + 1
            gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + i * 7_919 + count) % (2**63))
            rows.append(original(tuple(shape[1:]), generator=gen, dtype=kwargs.get("dtype")))
        out = torch.stack(rows) if rows else original(*args, **kwargs)
        return out.to(kwargs["device"]) if kwargs.get("device") is not None else out

    torch.rand = lambda *a, **k: draw(rand, *a, **k)
    torch.randn = lambda *a, **k: draw(randn, *a, **k)
    try:
        yield
    finally:
        torch.rand, torch.randn = rand, randn


def build(spec: Any, model: nn.Module, eps: float, seed: int, num_classes: int) -> Any:
    """A fresh torchattacks attack for one call (n_classes from the model where the class takes it)."""
    cls = _class(spec.class_name)
    params = dict(spec.params)
    signature = inspect.signature(cls.__init__).parameters
    if "n_classes" in signature and "n_classes" not in params:
        params["n_classes"] = num_classes
    extra = {k: v for k, v in (("seed", seed), ("verbose", False)) if k in signature}
    if getattr(spec, "eot", 1) > 1 and "eot_iter" in signature:
        params["eot_iter"] = spec.eot
    attack = cls(model, eps=float(eps), **params, **extra)
    if getattr(spec, "targets", 0):  # the most likely wrong classes only (torchattacks runs targets 2..n+1)
        attack.n_target_classes = target_count(spec, num_classes)
    return attack


def target_count(spec: Any, num_classes: int) -> int:
    """How many wrong classes a multi-targeted attack runs on a model with `num_classes` outputs: the
    spec's `targets`, at most every wrong class (torchattacks' own n_target_classes)."""
    every = num_classes - 1
    return min(spec.targets, every) if getattr(spec, "targets", 0) else every


def _drawing_per_example(single_run, prints: _Fingerprints, seed: int, counts: dict, tracer: Any = None):
    """`single_run` with its batch-wide random start drawn per example (`_per_example_draws`); a tracer
    (`robench.attacks.failure.PathTracer`) learns which examples the run's forwards carry."""

    def run(x_in, y_in, *args, **kwargs):
        if tracer is not None:
            tracer.begin_run(prints.positions(x_in))
        with _per_example_draws(x_in.shape, prints.lookup(x_in), seed, counts):
            return single_run(x_in, y_in, *args, **kwargs)

    return run


def adversarials(
    spec: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, seed: int,
    indices: torch.Tensor, tracer: Any = None,
) -> torch.Tensor:  # fmt: skip
    """The images the attack returns (unchecked). Runs inside fork_rng: the global RNG is untouched.
    With a tracer, `model` is that tracer and it is told where each single run's examples are."""
    with torch.no_grad():
        num_classes = int(model(images[:1]).shape[-1])
    first = int(indices[0]) if len(indices) else 0
    attack = build(spec, model, eps, (int(seed) * 1_000_003 + first) % (2**31), num_classes)
    if spec.per_example:
        prints, counts = _Fingerprints(images, indices), {}
        for name in (n for n in SINGLE_RUNS if hasattr(attack, n)):
            setattr(attack, name, _drawing_per_example(getattr(attack, name), prints, seed, counts, tracer))
    devices = [images.device.index or 0] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return attack(images, labels).detach()


def fab_target_run(
    spec: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, target: int, *, seed: int,
    indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The single run FAB-T's `perturb` makes for one target (2: the most likely wrong class, up to
    n_classes), on these examples: (points, their size in the norm as torchattacks measures it (float32),
    whether torchattacks' own check calls them fooled). The run reads no ε and draws nothing with one
    restart, which is what lets `robench.attacks.fab_reuse` decide every ε from it. Unchecked: the caller
    re-checks the point it uses."""
    with torch.no_grad():
        num_classes = int(model(images[:1]).shape[-1])
    first = int(indices[0]) if len(indices) else 0
    attack = build(spec, model, 0.0, (int(seed) * 1_000_003 + first) % (2**31), num_classes)
    attack.target_class = int(target)
    devices = [images.device.index or 0] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        points = attack.attack_single_run_targeted(images.clone(), labels.clone(), use_rand_start=False).detach()
        fooled = attack.get_logits(points).max(1)[1] != labels
    delta = (images - points).view(len(images), -1)
    size = delta.abs().max(1)[0] if spec.params.get("norm", "Linf") == "Linf" else (delta**2).sum(-1).sqrt()
    return points, size, fooled
