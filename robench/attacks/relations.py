"""What the honesty checks, the worst case and the failure checks need to know of an attack (its role, the
attacks it must beat, white- or black-box, its loss), read from the spec files with tomllib alone: no
Foolbox or torchattacks import, so reading results stays cheap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import RobenchError
from .specs import ACCESS, _is_iterative, _parse_relations, _spec_dir, load_specs, tomllib


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
        return self.role == "adversarial" and self.access == "white-box"


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
