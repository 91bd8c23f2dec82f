"""Attack specs: each `attacks/*.toml` names an attack class of an engine (Foolbox, torchattacks), its
parameters and its default ε grids; this module reads and checks them.

Adding an attack is adding a file. A spec is checked when loaded (parameters against the class's
signature, norm against the attack's own distance), so a typo fails before any model is attacked. A spec
whose engine is not installed still loads (the listing shows it) and is refused, in one line naming what to
install, only when it is asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RobenchError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

SPEC_PACKAGE = "robench.attack_specs"
NORMS = {2.0: "l2", math.inf: "linf"}  # Foolbox LpDistance.p -> our name
REQUIRED_KEYS = ("name", "description", "params", "norm", "eps")
OPTIONAL_KEYS = ("repeats", "role", "stronger_than", "engine", "class", "foolbox_class", "access", "loss", "targets")
ACCESS = ("white-box", "black-box")  # black-box: outputs only (Square), so masked gradients cannot mislead it
ENGINES = ("foolbox", "torchattacks", "robench")
ROLES = ("adversarial", "baseline", "certified")  # baseline: not an adversary (noise); certified: a proven lower
# bound (robench.attacks.certify_engine). Neither joins the worst case.
# Attacks whose outcome couples the examples of one call (CW's abort_early looks at the batch's summed
# loss) or that draw randomness robench cannot give per example run on these fixed chunks of the
# image index, each seeded from (seed, chunk start): their results then never depend on --batch-size.
CHUNK = 100
# Bump when an attack's numbers change meaning; part of every result row's identity. 3: the re-check's
# norm tolerance is relative too and runs in full fp32, as do the exact ||J|| rows; a suite row's identity
# names the grid whose breaks it carries; the worst case carries every break to larger ε; a larger
# evaluation's outcomes join a smaller one only where that is exact.
PROTOCOL = 3


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
        role: "adversarial" (the default), "baseline" (noise: a yardstick, never part of the worst case) or
            "certified" (a certification: its rows are lower bounds, `robench.attacks.certify_engine`).
        stronger_than: attacks this one must never be weaker than at equal ε (a honesty check).
        per_example: derived from the class: every example's outcome depends on that example alone
            (and on its own random draws), so the attack may run in batches of any size.
        iterative: derived: more than one gradient step (so it can reach any point of the ε ball).
        engine: "foolbox" or "torchattacks".
        access: "white-box" (follows gradients) or "black-box" (outputs only: Square).
        loss: what the attack optimizes, where the spec says ("ce", "dlr", "boundary", ...).
        targets: a multi-targeted torchattacks attack (APGD-T, FAB-T) runs only this many of the most likely
            wrong classes (0: all of them, as AutoAttack's standard version on 10 classes). Hashed.
        unavailable: why the attack cannot run in this environment ("" when it can).
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
    access: str = "white-box"
    loss: str = ""
    targets: int = 0  # multi-targeted attacks: how many of the most likely wrong classes (0: every one)
    unavailable: str = ""  # why it cannot run here (its engine is not installed); "" when it can
    eot: int = 1  # gradient samples averaged per step (EOT), set per evaluation (`variant`)
    votes: int = 1  # forward passes whose majority decides the re-check, set per evaluation
    surrogate: str = ""  # model_hash of the model the gradient steps are taken on, set per evaluation

    @property
    def uses_gradients(self) -> bool:
        """An adversarial attack that follows the model's input gradients (not noise, not Square)."""
        return self.role == "adversarial" and self.access == "white-box"

    @property
    def traced(self) -> bool:
        """Its path is recorded for the indicators of attack failure (`robench.attacks.failure`): an
        iterative fixed-ε gradient attack on a classification loss (PGD, APGD). It then returns the first
        adversarial its path met when its own return is not one."""
        return self.kind == "fixed" and self.uses_gradients and self.iterative and self.loss in ("ce", "dlr")

    @property
    def eps_free(self) -> bool:
        """FAB-T with one restart on a deterministic model: each target's run never reads ε (no random start),
        so one run per example and target decides every ε of a grid (`robench.attacks.fab_reuse`)."""
        return (self.engine == "torchattacks" and self.class_name == "FAB" and self.params.get("n_restarts", 1) == 1
                and bool(self.params.get("multi_targeted", False)) and self.votes <= 1)  # fmt: skip

    def variant(self, *, eot: int = 1, votes: int = 1, surrogate: str = "") -> "AttackSpec":
        """This spec as one evaluation runs it: EOT (where the engine can average gradients), a majority
        re-check, gradient steps on a surrogate model. Each changes `spec_hash`: rows never mix."""
        from dataclasses import replace

        gradients = self.uses_gradients and self.kind == "fixed"
        return replace(self, eot=eot if eot > 1 and gradients and _supports_eot(self) else 1, votes=votes,
                       surrogate=surrogate if gradients else "")  # fmt: skip

    @property
    def class_name(self) -> str:
        """The attack class in its engine (`foolbox_class` keeps its old name for Foolbox specs)."""
        return self.foolbox_class

    @property
    def params_json(self) -> str:
        """Canonical JSON of everything that changes the attack's numbers (not name or grids)."""
        payload: dict[str, Any] = {"class": self.foolbox_class, "params": self.params, "repeats": self.repeats}
        if self.engine != "foolbox":  # Foolbox specs keep the hashes they had before engines existed
            payload["engine"] = self.engine
        if self.traced:  # returns the first adversarial on its path where its own return is not one
            payload["path"] = "adversarial-on-path"
        for key, value, default in (("eot", self.eot, 1), ("votes", self.votes, 1), ("surrogate", self.surrogate, ""),
                                    ("targets", self.targets, 0)):  # fmt: skip
            if value != default:
                payload[key] = value
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
        from .foolbox_engine import _foolbox_class

        return _foolbox_class(self.foolbox_class)(**self.params)


def _supports_eot(spec: AttackSpec) -> bool:
    """Whether the engine can average gradient samples for this attack (Foolbox's PGD family; torchattacks
    classes with an `eot_iter` parameter: APGD, APGD-T)."""
    if spec.engine == "robench":
        return False
    if spec.engine == "torchattacks":
        from .torchattacks_engine import supports_eot
    else:
        from .foolbox_engine import supports_eot
    return supports_eot(spec.class_name)


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


def load_specs(directory: str | Path | None = None, only: set[str] | None = None, *,
               checked: bool = True) -> dict[str, AttackSpec]:  # fmt: skip
    """Load and validate every `*.toml` attack spec; returns {name: spec} sorted by name.

    Args:
        directory: where the specs lie; defaults to the packaged `robench.attack_specs`.
        only: load (and check against their engines, which imports them) just these names: an evaluation
            pays for the engines it uses, not for every file in the directory.
        checked: False skips the engines (no import): the spec's kind comes from `static_kind`, and it is
            good for its hash only (`robench.eval_done` asks the store with it), never for running.
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
        if only is not None and file.name[: -len(".toml")] not in only:
            continue
        spec = _parse_spec(data, stem=file.name[: -len(".toml")], where=f"attack spec {file.name}", checked=checked)
        specs[spec.name] = spec
    if not specs and only is None:
        raise RobenchError(f"no attack specs (*.toml) found in {root}")
    return {name: specs[name] for name in sorted(specs)}


def _parse_spec(data: dict, *, stem: str, where: str, checked: bool = True) -> AttackSpec:
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
    unavailable = ""
    if not checked:
        kind, per_ex = static_kind(engine, class_name), False
    elif engine == "torchattacks":
        from .torchattacks_engine import check_class, installed, per_example

        if installed():
            kind = check_class(class_name, data["params"], data["norm"], where)
        else:  # listed, and refused in one line when asked for (`resolve_attacks`, `suites.resolve`)
            kind, unavailable = "fixed", f"attack {stem!r} needs torchattacks, which is not installed (pip install torchattacks==3.3.0)"
        per_ex = per_example(class_name)
    elif engine == "robench" and class_name in CERTIFY_CLASSES:  # certification: per example by construction
        from .certify_engine import check_class as check_certify

        kind, per_ex = check_certify(class_name, data["params"], data["norm"], where), True
    elif engine == "robench":  # robench's own attacks: randomness per example by construction
        from .robench_engine import check_class as check_robench

        kind, per_ex = check_robench(class_name, data["params"], data["norm"], where), True
    else:
        from .foolbox_engine import _check_foolbox, _per_example_class

        kind = _check_foolbox(class_name, data["params"], data["norm"], where)
        per_ex = _per_example_class(class_name)
    if kind == "minimization" and repeats != 1:
        raise RobenchError(f"{where}: repeats applies to fixed-eps attacks only")
    role, stronger = _parse_relations(data, where)
    if (role == "certified") != (kind == "certified"):
        raise RobenchError(f"{where}: role 'certified' goes with a certification class ({', '.join(CERTIFY_CLASSES)}) "
                           "and only with one")  # fmt: skip
    if data.get("access", "white-box") not in ACCESS:
        raise RobenchError(f"{where}: access must be one of {', '.join(ACCESS)}, got {data.get('access')!r}")
    if not isinstance(data.get("loss", ""), str):
        raise RobenchError(f"{where}: loss must be a string (ce, dlr, ...)")
    targets = _parse_targets(data, engine, class_name, where)
    return AttackSpec(
        name=stem, description=" ".join(str(data["description"]).split()),
        foolbox_class=class_name, params=dict(data["params"]), norm=data["norm"],
        kind=kind, repeats=repeats, eps=eps, role=role, stronger_than=stronger,
        per_example=per_ex, iterative=_is_iterative(data), engine=engine,
        access=data.get("access", "white-box"), loss=data.get("loss", ""), targets=targets, unavailable=unavailable,
    )  # fmt: skip


def _parse_targets(data: dict, engine: str, class_name: Any, where: str) -> int:
    """`targets`: a positive integer, on a multi-targeted torchattacks class only (0 when absent)."""
    if "targets" not in data:
        return 0
    targets = data["targets"]
    if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
        raise RobenchError(f"{where}: targets must be a positive integer, got {targets!r}")
    targeted = class_name == "APGDT" or (class_name == "FAB" and data["params"].get("multi_targeted") is True)
    if engine != "torchattacks" or not targeted:
        raise RobenchError(f"{where}: targets applies to torchattacks' multi-targeted attacks only "
                           "(APGDT, FAB with multi_targeted = true)")  # fmt: skip
    return targets


# Foolbox 3.3.4's MinimizationAttack subclasses (tests/test_eval_done.py checks the list against Foolbox):
# what `static_kind` knows without importing Foolbox.
FOOLBOX_MINIMIZATION = frozenset({
    "BinarizationRefinementAttack", "BinarySearchContrastReductionAttack", "BoundaryAttack", "DDNAttack",
    "DatasetAttack", "EADAttack", "GaussianBlurAttack", "HopSkipJumpAttack", "InversionAttack",
    "L0BrendelBethgeAttack", "L0FMNAttack", "L1BrendelBethgeAttack", "L1FMNAttack", "L2BrendelBethgeAttack",
    "L2CarliniWagnerAttack", "L2DeepFoolAttack", "L2FMNAttack", "LInfFMNAttack",
    "LinearSearchBlendedUniformNoiseAttack", "LinearSearchContrastReductionAttack", "LinfDeepFoolAttack",
    "LinfinityBrendelBethgeAttack", "NewtonFoolAttack", "PointwiseAttack", "SaltAndPepperNoiseAttack",
})  # fmt: skip


CERTIFY_CLASSES = ("Certify", "VerifyMILP", "CertifiedRadius")  # robench.attacks.certify_engine.CLASSES, named without importing it


def static_kind(engine: str, class_name: Any) -> str:
    """A spec's kind without its engine: torchattacks and robench run fixed-ε attacks only; a Foolbox class
    is a minimization attack when Foolbox says so (`FOOLBOX_MINIMIZATION`). A wrong answer here can only
    give a hash no stored row has, so an `eval` runs instead of being skipped, never the reverse."""
    if engine == "robench" and class_name in CERTIFY_CLASSES:
        return "certified"
    return "minimization" if engine == "foolbox" and class_name in FOOLBOX_MINIMIZATION else "fixed"


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


def _parse_grid(grid: Any, where: str) -> tuple[float, ...]:
    def fine(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    if not isinstance(grid, list) or not grid or not all(fine(v) for v in grid):
        raise RobenchError(f"{where} must be a non-empty list of finite numbers, none negative")
    return tuple(sorted({float(v) for v in grid}))


_TYPES = ((bool, (bool,), "true or false"), (int, (int,), "an integer"), (float, (int, float), "a number"))


def _check_type(value: Any, default: Any, what: str) -> None:
    """Foolbox stores constructor arguments unchecked; a string for `steps` would fail mid-evaluation."""
    for default_type, accepted, wording in _TYPES:
        if isinstance(default, default_type):  # no default (None, required): nothing to compare with
            if not isinstance(value, accepted) or (isinstance(value, bool) and default_type is not bool):
                raise RobenchError(f"{what} must be {wording}, got {value!r}")
            return


def resolve_attacks(names: str, directory: str | Path | None = None) -> list[AttackSpec]:
    """Turn "pgd,fgsm" (or "all": every attack; certifications only when named too) into specs, in the order
    given, without duplicates."""
    specs = load_specs(directory)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if "all" in wanted:
        return [spec for spec in specs.values() if not spec.unavailable and (spec.kind != "certified" or spec.name in wanted)]
    if not wanted:
        raise RobenchError(f"no attack given; choose from {', '.join(sorted(specs))} or all")
    for name in wanted:
        if name not in specs:
            raise RobenchError(f"unknown attack {name!r}; choose from {', '.join(sorted(specs))}, all")
    return [check_available(specs[name]) for name in dict.fromkeys(wanted)]


def check_available(spec: AttackSpec) -> AttackSpec:
    """The spec, or a one-line refusal naming what to install when its engine is missing."""
    if spec.unavailable:
        raise RobenchError(spec.unavailable)
    return spec


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
