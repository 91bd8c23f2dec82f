"""Attacks as data: each `attacks/*.toml` names a Foolbox class, its parameters and default ε grids.

Adding an attack is adding a file. A spec is checked when loaded (parameters against the class's
signature, norm against the attack's own distance), so a typo fails before any model is attacked.
Fixed-ε attacks (FGSM, PGD, noise) run once per ε (`fixed_eps_accuracy`); minimization attacks (CW)
run once and give every ε (`minimal_distances`, then `accuracy_from_distances`).
Foolbox is imported inside the functions, so `import robench.attacks` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import RobenchError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

SPEC_PACKAGE = "robench.attack_specs"
NORMS = {2.0: "l2", math.inf: "linf"}  # Foolbox LpDistance.p -> our name
REQUIRED_KEYS = ("name", "description", "params", "norm", "eps")
OPTIONAL_KEYS = ("repeats", "role", "stronger_than", "engine", "class", "foolbox_class", "access", "loss")
ACCESS = ("white-box", "black-box")  # black-box: outputs only (Square), so masked gradients cannot mislead it
ENGINES = ("foolbox", "torchattacks")
ROLES = ("adversarial", "baseline")  # baseline: not an adversary (noise); excluded from the worst case
# Attacks whose outcome couples the examples of one call (CW's abort_early looks at the batch's summed
# loss) or that draw randomness robench cannot give per example run on these fixed chunks of the
# image index, each seeded from (seed, chunk start): their results then never depend on --batch-size.
CHUNK = 100
# Bump when an attack's numbers change meaning; part of every result row's identity. 3: the re-check's
# norm tolerance is relative too and runs in full fp32, as do the exact ||J|| rows; a suite row's identity
# names the grid whose breaks it carries; the worst case carries every break to larger ε; a larger
# evaluation's outcomes join a smaller one only where that is exact.
PROTOCOL = 3
TOLERANCE = 1e-6  # absolute slack of the re-check of every adversarial example (norm, box)
# Relative slack of the norm re-check. Adversarials are float32 images: the norm of (adv - x) carries a
# rounding error that grows with the norm (measured: up to 8e-8 of ε for clipping-aware L2 noise, MNIST to
# ImageNet sizes), so at L2 ε >= 12 an absolute 1e-6 alone rejected valid draws. 1e-5 is 100x that error
# and far below any grid's spacing.
RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class AttackSpec:
    """One attack preset, as loaded from a TOML file.

    Args:
        name: the file's stem, used on the command line and in result rows.
        description: what the attack does and why its parameters are what they are.
        foolbox_class: a class name in `foolbox.attacks`.
        params: keyword arguments for that class.
        norm: "linf" or "l2", checked against the Foolbox attack's distance.
        kind: "fixed" or "minimization", derived from the Foolbox class.
        repeats: independent random draws whose accuracies are averaged (noise).
        eps: default ε grid per dataset name.
        role: "adversarial" (the default) or "baseline" (noise: a yardstick, never part of the worst case).
        stronger_than: attacks this one must never be weaker than at equal ε (a honesty check).
        per_example: derived from the class: every example's outcome depends on that example alone
            (and on its own random draws), so the attack may run in batches of any size.
        iterative: derived: more than one gradient step (so it can reach any point of the ε ball).
    """

    name: str
    description: str
    foolbox_class: str
    params: dict
    norm: str
    kind: str
    repeats: int
    eps: dict[str, tuple[float, ...]]
    role: str = "adversarial"
    stronger_than: tuple[str, ...] = ()
    per_example: bool = False
    iterative: bool = False
    engine: str = "foolbox"

    @property
    def class_name(self) -> str:
        """The attack class in its engine (`foolbox_class` keeps its old name for Foolbox specs)."""
        return self.foolbox_class

    @property
    def params_json(self) -> str:
        """Canonical JSON of everything that changes the attack's numbers (not name or grids)."""
        payload = {"class": self.foolbox_class, "params": self.params, "repeats": self.repeats}
        if self.engine != "foolbox":  # Foolbox specs keep the hashes they had before engines existed
            payload["engine"] = self.engine
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        """Short hash of `params_json`: result rows made with a changed preset never mix with old ones."""
        return hashlib.sha256(self.params_json.encode()).hexdigest()[:12]

    def default_eps(self, dataset: str) -> list[float]:
        """The spec's ε grid for `dataset`."""
        if dataset not in self.eps:
            known = ", ".join(sorted(self.eps)) or "none"
            raise RobenchError(f"attack {self.name!r} has no default eps grid for dataset {dataset!r} "
                               f"(it has: {known}); pass --eps")  # fmt: skip
        return list(self.eps[dataset])

    def build(self) -> Any:
        """A fresh Foolbox attack instance (torchattacks attacks are built around a model: see
        `robench.attacks.torchattacks_engine`)."""
        if self.engine != "foolbox":
            raise RobenchError(f"attack {self.name!r} runs on {self.engine}, not Foolbox")
        return _foolbox_class(self.foolbox_class)(**self.params)


def _foolbox_class(name: str) -> type | None:
    import foolbox.attacks

    cls = getattr(foolbox.attacks, name, None)
    return cls if isinstance(cls, type) else None


def _spec_dir(directory: str | Path | None) -> Path | Any:
    """The packaged specs (works from a wheel), else the repository's attacks/ next to robench/."""
    if directory is not None:
        path = Path(directory)
        if not path.is_dir():
            raise RobenchError(f"attack spec directory {path} does not exist")
        return path
    try:
        from importlib.resources import files

        return files(SPEC_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "attacks"


def load_specs(directory: str | Path | None = None) -> dict[str, AttackSpec]:
    """Load and validate every `*.toml` attack spec; returns {name: spec} sorted by name.

    Args:
        directory: where the specs lie; defaults to the packaged `robench.attack_specs`.
    """
    root = _spec_dir(directory)
    specs = {}
    for file in (f for f in root.iterdir() if f.name.endswith(".toml")):
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RobenchError(f"attack spec {file.name}: not valid TOML ({exc})") from None
        if "suite" in data:  # a suite of attacks (robench.attacks.suites), not an attack
            continue
        spec = _parse_spec(data, stem=file.name[: -len(".toml")], where=f"attack spec {file.name}")
        specs[spec.name] = spec
    if not specs:
        raise RobenchError(f"no attack specs (*.toml) found in {root}")
    return {name: specs[name] for name in sorted(specs)}


def _parse_spec(data: dict, *, stem: str, where: str) -> AttackSpec:
    """Check one spec's keys and types, then what only Foolbox can tell (class, params, norm)."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise RobenchError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise RobenchError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if data["name"] != stem:
        raise RobenchError(f"{where}: name {data['name']!r} must match the file name {stem!r}")
    if not isinstance(data["params"], dict) or not isinstance(data["eps"], dict):
        raise RobenchError(f"{where}: [params] and [eps] must be tables")
    repeats = data.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise RobenchError(f"{where}: repeats must be a positive integer, got {repeats!r}")
    eps = {dataset: _parse_grid(grid, f"{where}: eps.{dataset}") for dataset, grid in data["eps"].items()}
    engine = data.get("engine", "foolbox")
    if engine not in ENGINES:
        raise RobenchError(f"{where}: unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    class_name = data.get("class", data.get("foolbox_class"))
    if class_name is None:
        raise RobenchError(f"{where}: missing key class (the attack class in its engine)")
    if engine == "torchattacks":
        from .torchattacks_engine import check_class, per_example

        kind, per_ex = check_class(class_name, data["params"], data["norm"], where), per_example(class_name)
    else:
        kind = _check_foolbox(class_name, data["params"], data["norm"], where)
        per_ex = _per_example_class(class_name)
    if kind == "minimization" and repeats != 1:
        raise RobenchError(f"{where}: repeats applies to fixed-eps attacks only")
    role, stronger = _parse_relations(data, where)
    if data.get("access", "white-box") not in ACCESS:
        raise RobenchError(f"{where}: access must be one of {', '.join(ACCESS)}, got {data.get('access')!r}")
    if not isinstance(data.get("loss", ""), str):
        raise RobenchError(f"{where}: loss must be a string (ce, dlr, ...)")
    return AttackSpec(
        name=stem, description=" ".join(str(data["description"]).split()),
        foolbox_class=class_name, params=dict(data["params"]), norm=data["norm"],
        kind=kind, repeats=repeats, eps=eps, role=role, stronger_than=stronger,
        per_example=per_ex, iterative=_is_iterative(data), engine=engine,
    )  # fmt: skip


def _parse_relations(data: dict, where: str) -> tuple[str, tuple[str, ...]]:
    """The spec's role and stronger-than list, checked (shared by load_specs and relations)."""
    role = data.get("role", "adversarial")
    if role not in ROLES:
        raise RobenchError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    stronger = data.get("stronger_than", [])
    if not isinstance(stronger, list) or not all(isinstance(s, str) and s for s in stronger):
        raise RobenchError(f"{where}: stronger_than must be a list of attack names")
    return role, tuple(stronger)


def _is_iterative(data: dict) -> bool:
    """More than one step (PGD, CW), so the attack can walk to any point of the ε ball."""
    if "suite" in data:
        return True
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    steps = params.get("steps", params.get("n_queries", 1))
    return isinstance(steps, int) and not isinstance(steps, bool) and steps > 1


def _per_example_class(class_name: str) -> bool:
    """Gradient-descent (FGSM, PGD) and additive-noise attacks treat each example on its own; robench
    gives them per-example random draws (`per_example_randomness`). Everything else runs in CHUNKs."""
    from foolbox.attacks.additive_noise import BaseAdditiveNoiseAttack
    from foolbox.attacks.gradient_descent_base import L2BaseGradientDescent, LinfBaseGradientDescent

    cls = _foolbox_class(class_name)
    return cls is not None and issubclass(cls, (LinfBaseGradientDescent, L2BaseGradientDescent,
                                                BaseAdditiveNoiseAttack))  # fmt: skip


@dataclass(frozen=True)
class Relation:
    """What the honesty checks and the worst case need to know of an attack, without Foolbox."""

    role: str = "adversarial"
    stronger_than: tuple[str, ...] = ()
    iterative: bool = False
    access: str = "white-box"
    loss: str = ""  # "ce", "dlr", ... where the spec says: the failure checks compare CE and DLR attacks

    @property
    def uses_gradients(self) -> bool:
        """An adversarial attack that follows the model's input gradients (not noise, not Square)."""
        return self.role != "baseline" and self.access == "white-box"


def relations(directory: str | Path | None = None) -> dict[str, Relation]:
    """{attack name: Relation} read from the spec files with tomllib alone (cheap: no Foolbox import).

    Attacks not (or no longer) in the directory are adversarial with no relations: callers use
    `.get(name, Relation())`.
    """
    try:
        root = _spec_dir(directory)
    except RobenchError:
        return {}
    out, suites = {}, {}
    for file in (f for f in root.iterdir() if f.name.endswith(".toml")):
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
            role, stronger = _parse_relations(data, f"attack spec {file.name}")
            if "suite" in data:
                role, stronger = "adversarial", ()
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RobenchError):
            continue  # load_specs reports broken specs; the checks just know nothing of them
        access, loss = data.get("access", "white-box"), data.get("loss", "")
        if access not in ACCESS or not isinstance(loss, str):
            continue
        name = file.name[: -len(".toml")]
        out[name] = Relation(role, stronger, _is_iterative(data), access, loss)
        if isinstance(data.get("suite"), list):
            suites[name] = [str(m) for m in data["suite"]]
    for name, member_names in suites.items():
        members = [out.get(m, Relation()) for m in member_names]
        # A suite reads its gradients from its white-box members; black-box only if all members are.
        access = "black-box" if members and all(m.access == "black-box" for m in members) else "white-box"
        out[name] = Relation(out[name].role, (), True, access, "")
    return out


def relation_of(relations: dict[str, Relation], attack: str) -> Relation:
    """An attack's Relation; a cascade step `<suite>.<member>` is its member's."""
    if attack not in relations and "." in attack:
        return relations.get(attack.split(".", 1)[1], Relation())
    return relations.get(attack, Relation())


def per_example_names(directory: str | Path | None = None) -> frozenset[str]:
    """Names of the attacks, and of the suites made of them only, whose outcome on an example depends on
    that example alone (`AttackSpec.per_example`): their first n outcomes on more images are exactly
    those of a run on n images. Loads the specs (imports Foolbox and torchattacks)."""
    from .suites import load_suites

    specs = load_specs(directory)
    names = {name for name, spec in specs.items() if spec.per_example}
    names |= {name for name, suite in load_suites(directory, specs).items() if all(m.per_example for m in suite.members)}
    return frozenset(names)


def _parse_grid(grid: Any, where: str) -> tuple[float, ...]:
    def fine(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    if not isinstance(grid, list) or not grid or not all(fine(v) for v in grid):
        raise RobenchError(f"{where} must be a non-empty list of finite numbers, none negative")
    return tuple(sorted({float(v) for v in grid}))


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


# default's type -> (accepted types, wording); bool first: it is an int subclass.
_TYPES = ((bool, (bool,), "true or false"), (int, (int,), "an integer"), (float, (int, float), "a number"))


def _check_type(value: Any, default: Any, what: str) -> None:
    """Foolbox stores constructor arguments unchecked; a string for `steps` would fail mid-evaluation."""
    for default_type, accepted, wording in _TYPES:
        if isinstance(default, default_type):  # no default (None, required): nothing to compare with
            if not isinstance(value, accepted) or (isinstance(value, bool) and default_type is not bool):
                raise RobenchError(f"{what} must be {wording}, got {value!r}")
            return


def resolve_attacks(names: str, directory: str | Path | None = None) -> list[AttackSpec]:
    """Turn "pgd,fgsm" (or "all") into specs, in the order given, without duplicates."""
    specs = load_specs(directory)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if "all" in wanted:
        return list(specs.values())
    if not wanted:
        raise RobenchError(f"no attack given; choose from {', '.join(sorted(specs))} or all")
    for name in wanted:
        if name not in specs:
            raise RobenchError(f"unknown attack {name!r}; choose from {', '.join(sorted(specs))}, all")
    return [specs[name] for name in dict.fromkeys(wanted)]


def parse_eps(text: str) -> list[float]:
    """Parse "0,0.1,8/255" into sorted unique floats (fractions allowed, as papers write ε)."""
    values = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        try:
            num, _, den = token.partition("/")
            value = float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            raise RobenchError(f"cannot read eps value {token!r}; write numbers like 0.1 or 8/255") from None
        if not math.isfinite(value) or value < 0:
            raise RobenchError(f"eps must be finite and >= 0, got {token!r}")
        values.append(value)
    if not values:
        raise RobenchError("eps list is empty; write e.g. 0,0.1,0.3")
    return sorted(set(values))


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


def _clean_correct(fmodel: Any, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Clean correctness, after the input checks Foolbox would otherwise make with a bare assert."""
    if len(images) != len(labels):
        raise RobenchError(f"{len(images)} images but {len(labels)} labels")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise RobenchError("attack inputs must be float images in [0, 1] (use robench.data.to_unit_float)")
    from ..devices import full_fp32

    with torch.no_grad(), full_fp32():  # as the re-check: ε = 0 stays exactly clean correctness
        return fmodel(images).argmax(1) == labels


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
    first = int(indices[0]) if indices is not None and len(indices) else 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * 1_000_003 + first) % (2**63))
        yield


def verify_adversarials(
    model_fn: Any, images: torch.Tensor, advs: torch.Tensor, labels: torch.Tensor, eps: float | None, norm: str,
    *, tolerance: float = TOLERANCE, relative: float = RELATIVE_TOLERANCE,
) -> torch.Tensor:  # fmt: skip
    """Which returned images are real adversarials: within ε in `norm` (size <= ε·(1 + relative) +
    tolerance, i.e. ε·(1 + 1e-5) + 1e-6 by default; eps None: any size), every pixel in [0, 1]
    (± tolerance), and misclassified by a fresh forward pass in full fp32 (TF32 off: the verdict must
    not depend on the GPU).

    An attack library's success flag is a claim; this is the check. The norm's slack is relative as well
    as absolute because float32 rounding of the adversarial grows with its size (see RELATIVE_TOLERANCE).
    Returns a bool tensor (N,).
    """
    from ..devices import full_fp32

    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.bool, device=labels.device)
    delta = (advs.double() - images.double()).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    finite = torch.isfinite(advs.flatten(1)).all(1)
    in_box = (advs.flatten(1).double() >= -tolerance).all(1) & (advs.flatten(1).double() <= 1 + tolerance).all(1)
    in_ball = torch.ones_like(in_box) if eps is None else size <= eps * (1 + relative) + tolerance
    with torch.no_grad(), full_fp32():
        fooled = model_fn(advs.clamp(0, 1)).argmax(1) != labels
    return finite & in_box & in_ball & fooled


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
