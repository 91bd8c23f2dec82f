"""Attacks as data: each `attacks/*.toml` names a Foolbox class, its parameters and default ε grids.

Adding an attack is adding a file. A spec is checked when loaded (parameters against the class's
signature, norm against the attack's own distance), so a typo fails before any model is attacked.
Fixed-ε attacks (FGSM, PGD, noise) run once per ε (`fixed_eps_accuracy`); minimization attacks (CW)
run once and give every ε (`minimal_distances`, then `accuracy_from_distances`).
Foolbox is imported inside the functions, so `import robench.attacks` stays cheap.

The room, one job per module: `specs` (TOML -> frozen spec), `relations` (what the checks need, without
Foolbox), one adapter per engine (`foolbox_engine`, `torchattacks_engine`), `verify` (the re-check),
`runners` (a spec on a batch), `failure` (signs that a gradient attack failed, from its own path),
`suites` (the cascade). The names below are the public ones, importable from `robench.attacks` as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .relations import Relation, per_example_names, relation_of, relations
from .specs import (
    ACCESS, CHUNK, ENGINES, NORMS, OPTIONAL_KEYS, PROTOCOL, REQUIRED_KEYS, ROLES, SPEC_PACKAGE, AttackSpec,
    _check_type, _parse_grid, _parse_relations, _spec_dir, load_specs, parse_eps, resolve_attacks, tomllib,
)  # fmt: skip

# What needs torch is imported when first asked for (PEP 562): specs, suites and relations are read without
# it, so `robench eval` can tell from the store that nothing is left to do before torch loads.
_LAZY = {
    "foolbox_engine": ("_ExampleRandom", "_foolbox_class", "_seeded", "_torch_module", "example_generators",
                       "foolbox_model"),
    "runners": ("accuracy_from_distances", "fixed_eps_accuracy", "frozen_parameters", "minimal_distances"),
    "verify": ("RELATIVE_TOLERANCE", "TOLERANCE", "_clean_correct", "verify_adversarials"),
}  # fmt: skip
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:
    from .foolbox_engine import _ExampleRandom, _foolbox_class, _seeded, _torch_module, example_generators, foolbox_model
    from .runners import accuracy_from_distances, fixed_eps_accuracy, frozen_parameters, minimal_distances
    from .verify import RELATIVE_TOLERANCE, TOLERANCE, _clean_correct, verify_adversarials


def __getattr__(name: str):
    if name in _WHERE:
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AttackSpec", "Relation", "CHUNK", "PROTOCOL", "accuracy_from_distances", "fixed_eps_accuracy",
    "foolbox_model", "frozen_parameters", "load_specs", "minimal_distances", "parse_eps", "per_example_names",
    "relation_of", "relations", "resolve_attacks", "verify_adversarials", "example_generators",
]  # fmt: skip
