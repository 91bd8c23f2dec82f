"""Comparisons on the same images: two models (per-image interval) or two groups of seeds of a defense
(interval over seeds and images), per attack and ε, and the matching rule that decides what may be
compared at all.

Matching rule: rows compare only when they share attack, norm, attack spec hash, n, evaluation seed
and protocol (the same images under the same attack; for a score averaged over ε, the same ε grid
too). A mismatch is refused with one line naming what differs (`mismatch`), never answered with a
number. Outcomes of one row key found in several files (a merged store and one of its sources) count
once (`unique_outcomes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .csvfile import JACOBIAN_ATTACKS, KEY, WORST_CASE, eps_key
from .stats import format_p, paired_difference

NORM_SYMBOL = {"linf": "L∞", "l2": "L2"}
MATCH = ["attack", "norm", "spec_hash", "n", "seed", "protocol"]
FIELDS = {"spec": "attack spec hashes", "n": "n (test images)", "seed": "evaluation seed", "protocol": "protocol",
          "eps": "ε grid"}  # fmt: skip


def unique_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Each (row key, example) once, whichever files it was read from."""
    if outcomes.empty:
        return outcomes
    return outcomes.drop_duplicates([c for c in KEY if c in outcomes.columns] + ["example"], keep="first")


def evaluation(rows: pd.DataFrame, model_hash: str, attack: str, norm: str) -> dict[str, Any] | None:
    """What one model's current rows of (attack, norm) were evaluated with, for `mismatch`."""
    sub = rows[(rows["model_hash"] == model_hash) & (rows["attack"] == attack) & (rows["norm"] == norm)]
    if sub.empty:
        return None
    eps = [eps_key(e) for e in sub["epsilon"]]
    return {"spec": tuple(sorted(zip(eps, sub["spec_hash"]))), "n": tuple(sorted(set(sub["n"].astype(int)))),
            "seed": tuple(sorted(set(sub["seed"].astype(int)))),
            "protocol": tuple(sorted(set(sub["protocol"].astype(int)))), "eps": tuple(sorted(set(eps)))}  # fmt: skip


def mismatch(evaluations: dict[str, dict[str, Any]], *, what: str, eps: bool = True) -> str | None:
    """None when every evaluation matches, else one line: what differs, and the values per model.

    Args:
        evaluations: {label: `evaluation(...)`}.
        what: the attack in words, for the line.
        eps: whether the ε grids must match too (they must for a score averaged over ε).
    """
    fields = ["n", "seed", "protocol"] + (["eps"] if eps else []) + ["spec"]
    for field in fields:
        values = {label: e[field] for label, e in evaluations.items()}
        if field == "spec" and not eps:  # compare spec hashes only at the ε both sides have
            common = set.intersection(*(set(e["eps"]) for e in evaluations.values()))
            values = {label: tuple(p for p in v if p[0] in common) for label, v in values.items()}
        if len(set(values.values())) > 1:
            by_value: dict[tuple, list[str]] = {}
            for label, v in values.items():
                by_value.setdefault(v, []).append(label)
            shown = "; ".join(f"{_show(field, v)}: " + (", ".join(labels) if len(labels) <= 3 else
                                                         f"{', '.join(labels[:2])} and {len(labels) - 2} more")
                              for v, labels in sorted(by_value.items(), key=lambda item: len(item[1])))  # fmt: skip
            return f"not comparable under {what}: the {FIELDS[field]} differ ({shown})"
    return None


def _show(field: str, value: tuple) -> str:
    if field == "spec":
        return "/".join(sorted({s for _, s in value})) or "none"
    if field == "eps":
        return "{" + ", ".join(f"{e:g}" for e in value) + "}"
    return "/".join(str(v) for v in value)


def _outcome_vectors(outcomes: pd.DataFrame, model_hash: str) -> dict[tuple, np.ndarray]:
    sub = unique_outcomes(outcomes[outcomes["model_hash"] == model_hash])
    vectors = {}
    for key, group in sub.groupby(["attack", "norm", "spec_hash", "n", "seed", "protocol", "epsilon"], sort=False):
        *head, eps = key
        vectors[(*head, eps_key(eps))] = group.sort_values("example")["robust"].to_numpy(float)
    return vectors


def _keys(rows: pd.DataFrame, model_hash: str, attack: str | None) -> list[dict[str, Any]]:
    mine = rows[(rows["model_hash"] == model_hash) & (~rows["attack"].isin(JACOBIAN_ATTACKS))]
    return [r for r in mine.to_dict("records") if attack is None or r["attack"] == attack]


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row[c] for c in MATCH) + (eps_key(row["epsilon"]),)


def compare_models(
    rows: pd.DataFrame, outcomes: pd.DataFrame, hash_a: str, hash_b: str, *, attack: str | None = None
) -> list[dict[str, Any]]:
    """Paired comparisons of model A against model B, one per (attack, norm, ε) both have.

    Args:
        rows: current result rows (see `select.current_rows`), attack names as stored.
        outcomes: per-example outcomes (`robench.results.outcomes`; duplicates count once).
        hash_a, hash_b: the two models' weights hashes.
        attack: only this attack (e.g. "pgd" or "worst_case").
    Rows compare under the matching rule (module docstring). The interval is about these two models
    (Newcombe's method 10 over the images; `stats.paired_difference`), not about their defenses.
    Worst cases come first.
    """
    return compare_groups(rows, outcomes, [hash_a], [hash_b], attack=attack)


def compare_groups(rows: pd.DataFrame, outcomes: pd.DataFrame, hashes_a: list[str], hashes_b: list[str], *,
                   attack: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Like `compare_models` for two groups of models (the seeds of two defenses): per (attack, norm, ε)
    every model of both groups has under the matching rule, the difference of the groups' mean
    accuracies with the seed-aware interval of `seeds.defense_difference` (`method` says which)."""
    from .seeds import defense_difference, seeds_note

    vectors = {h: _outcome_vectors(outcomes, h) for h in [*hashes_a, *hashes_b]}
    keys = {h: {_key(r) for r in _keys(rows, h, attack)} for h in vectors}
    found = []
    for row in _keys(rows, hashes_a[0], attack):
        key = _key(row)
        if not all(key in keys[h] and key in vectors[h] for h in vectors):
            continue
        a = np.stack([vectors[h][key] for h in hashes_a])
        b = np.stack([vectors[h][key] for h in hashes_b])
        if len(hashes_a) == len(hashes_b) == 1:
            diff = paired_difference(a[0], b[0])
            extra = {"p_value": diff.p_value, "a_only": diff.a_only, "b_only": diff.b_only, "test": diff.test,
                     "method": f"{diff.interval} over images: these two models", "seeds_note": ""}  # fmt: skip
            low, high, value = diff.low, diff.high, diff.difference
        else:
            est = defense_difference(a, b)
            extra = {"p_value": est.p_value, "a_only": -1, "b_only": -1, "test": "two-level" if est.seed_aware else "images",
                     "method": est.method, "seeds_note": seeds_note(est.seeds)}  # fmt: skip
            low, high, value = est.low, est.high, est.estimate
        found.append({"attack": row["attack"], "norm": row["norm"], "epsilon": float(row["epsilon"]),
                      "n": int(row["n"]), "accuracy_a": float(a.mean()), "accuracy_b": float(b.mean()),
                      "difference": value, "low": low, "high": high, "seeds_a": len(hashes_a),
                      "seeds_b": len(hashes_b), **extra})  # fmt: skip
    return sorted(found, key=lambda c: (c["attack"] != WORST_CASE, c["attack"], c["norm"], c["epsilon"]))


def refusals(rows: pd.DataFrame, hashes_a: list[str], hashes_b: list[str], labels: dict[str, str],
             attack: str | None = None) -> list[str]:  # fmt: skip
    """One line per (attack, norm) every model has but that the matching rule refuses."""
    lines = []
    models = [*hashes_a, *hashes_b]
    pairs = rows[rows["model_hash"].isin(models) & ~rows["attack"].isin(JACOBIAN_ATTACKS)][["attack", "norm"]]
    for name, norm in pairs.drop_duplicates().itertuples(index=False):
        if attack is not None and name != attack:
            continue
        found = {labels.get(h, h[:8]): evaluation(rows, h, name, norm) for h in models}
        if any(v is None for v in found.values()):
            continue
        what = f"{'worst case' if name == WORST_CASE else name} {NORM_SYMBOL.get(norm, norm)}"
        line = mismatch(found, what=what, eps=False)
        if line:
            lines.append(line)
    return lines


def describe(item: dict[str, Any], label_a: str, label_b: str) -> str:
    """'jr=0.01 vs none, worst case L∞ ε=0.1: +35.5 points [28.1, 42.9], p < 1e-6, n=200'; for groups
    of seeds, the seeds per side and how the interval was made."""
    what = "worst case" if item["attack"] == WORST_CASE else item["attack"]
    points = lambda v: f"{100 * v:+.1f}"  # noqa: E731
    seeds = item.get("seeds_a", 1), item.get("seeds_b", 1)
    text = (f"{label_a} vs {label_b}, {what} {NORM_SYMBOL.get(item['norm'], item['norm'])} ε={item['epsilon']:g}: "
            f"{points(item['difference'])} points [{100 * item['low']:.1f}, {100 * item['high']:.1f}], "
            f"{format_p(item['p_value'])}, n={item['n']}")  # fmt: skip
    if seeds != (1, 1):
        text += f", {seeds[0]} vs {seeds[1]} seeds ({item.get('method', '')})"
    return text
