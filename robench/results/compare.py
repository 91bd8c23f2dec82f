"""Two models on the same images: per attack and ε, the difference in robust accuracy with its
interval and the exact McNemar p-value (see `stats.paired_difference`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .csvfile import JACOBIAN_ATTACKS, WORST_CASE, eps_key
from .stats import format_p, paired_difference

NORM_SYMBOL = {"linf": "L∞", "l2": "L2"}
MATCH = ["attack", "norm", "spec_hash", "n", "seed", "protocol"]


def _outcome_vectors(outcomes: pd.DataFrame, model_hash: str) -> dict[tuple, np.ndarray]:
    sub = outcomes[outcomes["model_hash"] == model_hash]
    vectors = {}
    for key, group in sub.groupby(["attack", "norm", "spec_hash", "n", "seed", "protocol", "epsilon"], sort=False):
        *head, eps = key
        vectors[(*head, eps_key(eps))] = group.sort_values("example")["robust"].to_numpy(float)
    return vectors


def compare_models(
    rows: pd.DataFrame, outcomes: pd.DataFrame, hash_a: str, hash_b: str, *, attack: str | None = None
) -> list[dict[str, Any]]:
    """Paired comparisons of model A against model B, one per (attack, norm, ε) both have.

    Args:
        rows: current result rows (see `select.current_rows`), attack names as stored.
        outcomes: per-example outcomes (`robench.results.outcomes`).
        hash_a, hash_b: the two models' weights hashes.
        attack: only this attack (e.g. "pgd" or "worst_case").
    Rows count as comparable when they share attack, norm, spec, n, seed and protocol, so both
    models saw the same images under the same attack. Worst cases come first.
    """
    a_rows = rows[(rows["model_hash"] == hash_a) & (~rows["attack"].isin(JACOBIAN_ATTACKS))]
    b_keys = {tuple(r[c] for c in MATCH) + (eps_key(r["epsilon"]),)
              for r in rows[rows["model_hash"] == hash_b].to_dict("records")}  # fmt: skip
    va, vb = _outcome_vectors(outcomes, hash_a), _outcome_vectors(outcomes, hash_b)
    found = []
    for row in a_rows.to_dict("records"):
        key = tuple(row[c] for c in MATCH) + (eps_key(row["epsilon"]),)
        if (attack is not None and row["attack"] != attack) or key not in b_keys or key not in va or key not in vb:
            continue
        diff = paired_difference(va[key], vb[key])
        found.append({"attack": row["attack"], "norm": row["norm"], "epsilon": float(row["epsilon"]),
                      "n": int(row["n"]), "accuracy_a": float(va[key].mean()), "accuracy_b": float(vb[key].mean()),
                      "difference": diff.difference, "low": diff.low, "high": diff.high, "p_value": diff.p_value,
                      "a_only": diff.a_only, "b_only": diff.b_only, "test": diff.test})  # fmt: skip
    return sorted(found, key=lambda c: (c["attack"] != WORST_CASE, c["attack"], c["norm"], c["epsilon"]))


def describe(item: dict[str, Any], label_a: str, label_b: str) -> str:
    """'jr=0.01 vs none, worst case L∞ ε=0.1: +35.5 points [28.1, 42.9], p < 1e-6, n=200'."""
    what = "worst case" if item["attack"] == WORST_CASE else item["attack"]
    points = lambda v: f"{100 * v:+.1f}"  # noqa: E731
    return (f"{label_a} vs {label_b}, {what} {NORM_SYMBOL.get(item['norm'], item['norm'])} ε={item['epsilon']:g}: "
            f"{points(item['difference'])} points [{100 * item['low']:.1f}, {100 * item['high']:.1f}], "
            f"{format_p(item['p_value'])}, n={item['n']}")  # fmt: skip
