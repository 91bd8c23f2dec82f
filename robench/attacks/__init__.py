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

from .foolbox_engine import _ExampleRandom, _foolbox_class, _seeded, _torch_module, example_generators, foolbox_model
from .relations import Relation, per_example_names, relation_of, relations
from .runners import accuracy_from_distances, fixed_eps_accuracy, frozen_parameters, minimal_distances
from .specs import (
    ACCESS, CHUNK, ENGINES, NORMS, OPTIONAL_KEYS, PROTOCOL, REQUIRED_KEYS, ROLES, SPEC_PACKAGE, AttackSpec,
    _check_type, _parse_grid, _parse_relations, _spec_dir, load_specs, parse_eps, resolve_attacks, tomllib,
)  # fmt: skip
from .verify import RELATIVE_TOLERANCE, TOLERANCE, _clean_correct, verify_adversarials

__all__ = [
    "AttackSpec", "Relation", "CHUNK", "PROTOCOL", "accuracy_from_distances", "fixed_eps_accuracy",
    "foolbox_model", "frozen_parameters", "load_specs", "minimal_distances", "parse_eps", "per_example_names",
    "relation_of", "relations", "resolve_attacks", "verify_adversarials", "example_generators",
]  # fmt: skip
