"""Suites: a fixed ensemble of attacks run as a cascade (AutoAttack's protocol), declared in TOML.

`attacks/autoattack.toml` is a list of attack names (`suite = ["apgd-ce", "apgd-t", "square"]`),
a norm and default ε grids. The cascade (`robench.evaluate`) attacks each example only while it
survives: member k runs only on the examples that members 1..k-1 failed to break at this ε, and
over the ε grid in increasing order an example broken at ε stays broken at every larger ε (its
adversarial lies in the larger ball). Members that treat examples one by one run on the survivors
alone; the others (Square, DDN) run on every fixed chunk that still holds a survivor, exactly as
they would without the cascade, so the cascade's outcomes equal running every member on every
example and taking the per-example AND (tested).

The carry is valid (the balls nest) and it is where the suite's speed comes from, but it makes a row's
number depend on which smaller ε ran before it: `--eps 0.3` alone breaks fewer examples at 0.3 than the
default grid does. So a row's identity names that grid: the spec_hash of the suite's rows at ε hashes
the suite and the ε' of the run's grid with 0 < ε' < ε whose breaks it carries (`Suite.row_hash`; with
nothing carried it is the suite's own `spec_hash`). The grid is the one asked for (--eps, else the
default grid), never whatever happens to be in the store, so one key always means one number. The
rows of one suite spec share `"spec"` in their attack_params (`robench.results.derived.spec_family`), so
"the latest spec of an attack" still spans every carried grid. The member rows (`autoattack.square`) count what the cascade has broken after that member at ε, including
what every member broke at the carried ε; their `attack_params` say so (`Suite.member_params`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import RobenchError
from .specs import AttackSpec, _parse_grid, _spec_dir, check_available, load_specs, tomllib

def eps_key(eps: float) -> float:
    """ε as result rows compare it (robench.results.eps_key; not imported: it would load pandas)."""
    return round(float(eps), 12)


SUITE_KEYS = ("name", "description", "suite", "norm", "eps")
SUITE_OPTIONAL = ("eot",)  # gradient samples per step of its gradient members (autoattack-rand: 20)
DEFAULT = ("noise", "fgsm", "pgd", "cw", "autoattack")  # `--attack default`: the paper's four + AutoAttack


@dataclass(frozen=True)
class Suite:
    """A cascade of attacks.

    Args:
        name: the file's stem; the name of its result rows.
        description: what it is and why.
        members: attack specs, in cascade order.
        norm: the norm every member shares.
        eps: default ε grid per dataset.
    """

    name: str
    description: str
    members: tuple[AttackSpec, ...]
    norm: str
    eps: dict[str, tuple[float, ...]]
    kind: str = "suite"
    eot: int | None = None

    def variant(self, *, eot: int = 1, votes: int = 1, surrogate: str = "") -> "Suite":
        """The suite with every member as one evaluation runs it (`AttackSpec.variant`): its hash follows."""
        from dataclasses import replace

        return replace(self, members=tuple(m.variant(eot=eot, votes=votes, surrogate=surrogate) for m in self.members))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.params_json.encode()).hexdigest()[:12]

    @property
    def params_json(self) -> str:
        return json.dumps({"suite": [[m.name, m.spec_hash] for m in self.members]}, separators=(",", ":"))

    def member_row_name(self, member: AttackSpec) -> str:
        """Rows of the cascade after each member: robust accuracy so far (AutoAttack's running log)."""
        return f"{self.name}.{member.name}"

    @staticmethod
    def carried(eps: float, grid: list[float] | tuple[float, ...]) -> tuple[float, ...]:
        """The ε' of the run's grid whose breaks the row at ε carries: 0 < ε' < ε (ε' = 0 breaks nothing)."""
        return tuple(sorted({eps_key(e) for e in grid if 0 < eps_key(e) < eps_key(eps)}))

    def row_hash(self, eps: float, grid: list[float] | tuple[float, ...]) -> str:
        """The spec_hash of the suite's rows (and its member rows) at ε when the cascade ran over `grid`:
        the suite's `spec_hash` when nothing is carried, else a hash of it and the carried ε'."""
        carried = self.carried(eps, grid)
        if not carried:
            return self.spec_hash
        payload = json.dumps([self.params_json, list(carried)], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def row_params(self, eps: float, grid: list[float] | tuple[float, ...]) -> str:
        """The suite row's attack_params: its members and the ε' it carries breaks from."""
        return json.dumps({"suite": [[m.name, m.spec_hash] for m in self.members], "spec": self.spec_hash,
                           "carried_eps": list(self.carried(eps, grid))}, separators=(",", ":"))  # fmt: skip

    def member_params(self, member: AttackSpec, eps: float, grid: list[float] | tuple[float, ...]) -> str:
        """A member row's attack_params, saying what it counts: robust after the members up to this one
        at ε and after every member at each carried ε' (so it includes other members' breaks)."""
        names = [m.name for m in self.members]
        return json.dumps({
            "member": json.loads(member.params_json), "suite": self.name, "spec": self.spec_hash,
            "counts": "robust after " + ", ".join(names[: names.index(member.name) + 1]) + " at eps"
                      + (" and after every member at each carried_eps" if self.carried(eps, grid) else ""),
            "carried_eps": list(self.carried(eps, grid)),
        }, separators=(",", ":"))  # fmt: skip

    def default_eps(self, dataset: str) -> list[float]:
        if dataset not in self.eps:
            raise RobenchError(f"suite {self.name!r} has no default eps grid for dataset {dataset!r}; pass --eps")
        return list(self.eps[dataset])


def load_suites(directory: str | Path | None = None, specs: dict[str, AttackSpec] | None = None,
                only: set[str] | None = None) -> dict[str, Suite]:  # fmt: skip
    """Every suite file (a TOML with a `suite` key; with `only`, just those), checked: known members, one
    norm, no repeats."""
    specs = load_specs(directory) if specs is None else specs
    suites = {}
    for file in (f for f in _spec_dir(directory).iterdir() if f.name.endswith(".toml")):
        data = tomllib.loads(file.read_text(encoding="utf-8"))
        if "suite" not in data:
            continue
        where, stem = f"attack suite {file.name}", file.name[: -len(".toml")]
        if only is not None and stem not in only:
            continue
        missing = [k for k in SUITE_KEYS if k not in data]
        unknown = sorted(set(data) - set(SUITE_KEYS) - set(SUITE_OPTIONAL))
        if missing or unknown:
            raise RobenchError(f"{where}: {'missing' if missing else 'unknown'} key(s) {', '.join(missing or unknown)}")
        if data["name"] != stem:
            raise RobenchError(f"{where}: name {data['name']!r} must match the file name {stem!r}")
        names = data["suite"]
        if not isinstance(names, list) or not names or len(set(names)) != len(names):
            raise RobenchError(f"{where}: suite must be a non-empty list of distinct attack names")
        for name in names:
            if name not in specs:
                raise RobenchError(f"{where}: unknown attack {name!r} (attacks: {', '.join(sorted(specs))})")
            if specs[name].norm != data["norm"]:
                raise RobenchError(f"{where}: {name} is an {specs[name].norm} attack in an {data['norm']} suite")
            if specs[name].role != "adversarial":
                raise RobenchError(f"{where}: {name} is a {specs[name].role}, not an adversary")
        eps = {d: _parse_grid(g, f"{where}: eps.{d}") for d, g in data["eps"].items()} if isinstance(data["eps"], dict) else {}
        eot = data.get("eot")
        if eot is not None and (not isinstance(eot, int) or isinstance(eot, bool) or not 1 <= eot <= 1000):
            raise RobenchError(f"{where}: eot must be an integer between 1 and 1000, got {eot!r}")
        suites[stem] = Suite(stem, " ".join(str(data["description"]).split()), tuple(specs[n] for n in names),
                             data["norm"], eps, eot=eot)  # fmt: skip
    return dict(sorted(suites.items()))


def resolve(names: str, directory: str | Path | None = None, *, checked: bool = True) -> list[AttackSpec | Suite]:
    """"pgd,autoattack", "default" (noise, FGSM, PGD, CW and AutoAttack) or "all" (every attack and
    suite; certifications only when named too) -> specs and suites, in the order given, without duplicates. Only the attacks named (and the
    members of the suites named) are loaded and checked against their engines (`checked=False`: not at
    all, for their hashes only; see `load_specs`)."""
    spec_names, suite_members = _catalog(directory)
    known = {**dict.fromkeys(spec_names), **dict.fromkeys(suite_members)}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    expanded = []
    for name in wanted:
        expanded += list(known) if name == "all" else list(DEFAULT) if name == "default" else [name]
    if not expanded:
        raise RobenchError(f"no attack given; choose from {', '.join(known)}, default or all")
    for name in expanded:
        if name not in known:
            raise RobenchError(f"unknown attack {name!r}; choose from {', '.join(known)}, default, all")
    expanded = list(dict.fromkeys(expanded))
    needed = {n for n in expanded if n in spec_names} | {m for n in expanded for m in suite_members.get(n, [])}
    specs = load_specs(directory, only=needed, checked=checked)
    suites = load_suites(directory, specs, only={n for n in expanded if n in suite_members})
    chosen = [{**specs, **suites}[name] for name in expanded]
    if "all" in wanted:  # every attack this environment can run; certifications only when named
        chosen = [c for c in chosen if not any(s.unavailable for s in _members(c))
                  and (c.kind != "certified" or c.name in wanted)]  # fmt: skip
    for item in chosen if checked else ():
        for spec in _members(item):
            check_available(spec)
    return chosen


def _catalog(directory: str | Path | None) -> tuple[list[str], dict[str, list[str]]]:
    """The attack names (sorted) and {suite: member names} (sorted), from the files alone: no engine import."""
    specs, suites = [], {}
    for file in (f for f in _spec_dir(directory).iterdir() if f.name.endswith(".toml")):
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RobenchError(f"attack spec {file.name}: not valid TOML ({exc})") from None
        stem = file.name[: -len(".toml")]
        if "suite" in data:
            members = data["suite"]
            suites[stem] = [str(m) for m in members] if isinstance(members, list) else []
        else:
            specs.append(stem)
    if not specs:
        raise RobenchError(f"no attack specs (*.toml) found in {_spec_dir(directory)}")
    return sorted(specs), dict(sorted(suites.items()))


def _members(item: AttackSpec | Suite) -> tuple[AttackSpec, ...]:
    return item.members if isinstance(item, Suite) else (item,)
