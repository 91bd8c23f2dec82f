"""The keys of an evaluation's rows, from the config and the specs alone: which ε grid each attack runs,
the spec (or suite) variant this model gets (EOT, majority re-check, surrogate), and the spec_hash each
row at ε is stored under. `robench.evaluate` uses them to find what is left to do; `robench.eval_done`
to answer "nothing" before loading a model, a dataset or an engine. One copy, so the two never disagree.
"""

from __future__ import annotations

from typing import Any, Callable

EOT_DEFAULT = 20  # gradient samples and re-check passes on a randomized model, as AutoAttack's `rand` version


def randomness(eot_option: int | None, checks_json: str | None) -> tuple[int, int]:
    """(EOT samples, re-check votes) for a model: --eot, else 20 when its outputs are random (as probed)."""
    from .model_probes import from_json

    randomized = bool((from_json(checks_json) or {}).get("randomized"))
    eot = eot_option if eot_option is not None else (EOT_DEFAULT if randomized else 1)
    return eot, max(eot, EOT_DEFAULT) if randomized else 1


def grid(spec: Any, config: Any, dataset: str) -> list[float]:
    """The ε grid an attack or suite runs: --eps, else its default grid for the dataset."""
    return sorted(set(config.eps)) if config.eps is not None else list(spec.default_eps(dataset))


def variant(spec: Any, config: Any, eot: int, votes: int, surrogate: str) -> Any:
    """The spec (or suite) as this evaluation runs it; each setting is part of its rows' identity. A
    suite's own EOT (`autoattack-rand`: 20) applies unless --eot says otherwise."""
    from .attacks.suites import Suite

    if isinstance(spec, Suite) and spec.eot and config.eot is None:
        eot = spec.eot
    return spec.variant(eot=eot, votes=votes, surrogate=surrogate)


def row_hash(spec: Any, eps: float, eps_grid: list[float]) -> str:
    """The spec_hash of a row at ε: the spec's, or for a suite one that names the grid it carries."""
    return spec.row_hash(eps, eps_grid) if hasattr(spec, "row_hash") else spec.spec_hash


def row_key(spec: Any, eps: float, eps_grid: list[float]) -> tuple[str, str, float]:
    """(attack, spec_hash, ε key): how the store's `done` names a row."""
    from .attacks.suites import eps_key

    return spec.name, row_hash(spec, eps, eps_grid), eps_key(eps)


def expected_rows(config: Any, dataset: str, n: int, votes: int, normalized: Callable[[], bool]) -> set | None:
    """Every row key an evaluation of one model with `config` writes (attacks with EOT 1, no surrogate),
    the exact ||J|| rows included (`normalized()`: whether the model has its own input normalization,
    asked only if needed); None when the ||J|| rows would have another n (--jacobian-n)."""
    from .attacks.suites import resolve
    from .results import JACOBIAN_ATTACK, JACOBIAN_NORMALIZED

    jn = n if config.jacobian_n is None else min(config.jacobian_n, n)
    if jn not in (0, n):
        return None
    keys = set()
    for item in resolve(config.attacks, checked=False):
        item = variant(item, config, 1, votes, "")
        eps_grid = grid(item, config, dataset)
        keys |= {row_key(item, e, eps_grid) for e in eps_grid}
    if jn:
        keys.add((JACOBIAN_ATTACK, "exact", 0.0))
        if normalized():
            keys.add((JACOBIAN_NORMALIZED, "exact", 0.0))
    return keys
