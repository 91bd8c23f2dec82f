"""The numbers of `robench report`'s summary.csv, one row per model (weights hash), from results rows.

Kept apart from the drawing and the writing so that a number can be checked against the CSV rows
without a figure or a file (tests/test_report.py recomputes them). Columns:
    model, defense, dataset, n, seed      n: the fewest test images behind any number in the row;
                                          seed: the evaluation seed
    clean_accuracy                        epsilon = 0 accuracy (the jacobian_norm row's, if present)
    jacobian_norm_normalized              mean exact test ||J||_F in the paper's units, d logits / d
                                          (normalized input) (empty: normalization unknown)
    jacobian_norm_pixel                   mean exact test ||J||_F in pixel units, d logits / d pixel
    jacobian_norm                         the same as jacobian_norm_pixel (its name before units)
    cw_median_distance                    median minimal L2 distance found by CW (inf: most examples
                                          never broken; empty: not run); any other minimization
                                          attack X gets X_median_distance
    auc_<attack>                          area under accuracy vs epsilon (trapezoid rule) divided by
                                          the epsilon range: the mean accuracy over the grid's range,
                                          in [0, 1]. Comparable only between models on the same grid.
    eps50_<attack>                        the epsilon at which accuracy first falls below 0.5,
                                          linearly interpolated between grid points (empty: never)
    optimality_<attack>                   of the examples the worst case of the attack's norm breaks,
                                          the share this attack breaks too (AttackBench's optimality,
                                          `results.select.optimality`), mean over epsilon > 0
    flags                                 union of the rows' honesty flags
When a model was evaluated more than once, each attack uses its evaluation with the largest n (then
the one listed last), and of duplicate (attack, epsilon) rows the one listed last: later CSVs win.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .results import JACOBIAN_ATTACK, JACOBIAN_ATTACKS, JACOBIAN_NORMALIZED
from .results.select import curve_order, current_rows, headline, optimality, with_curve_names

LEVEL = 0.5  # eps50: where accuracy first drops below this
DISTANCE_ATTACKS = ("cw",)  # always get a median-distance column, even when not run


def select_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The current rows (latest spec and protocol of each attack, largest n, later rows winning ties),
    with worst-case rows named by their norm (worst_case_linf, worst_case_l2)."""
    return with_curve_names(current_rows(df))


def _by_eps(eps: Any, accuracy: Any) -> tuple[np.ndarray, np.ndarray]:
    eps, accuracy = np.asarray(eps, float), np.asarray(accuracy, float)
    order = np.argsort(eps, kind="stable")
    return eps[order], accuracy[order]


def auc(eps: Any, accuracy: Any) -> float:
    """Trapezoid area under accuracy(eps) over the eps range, divided by the range (so in [0, 1])."""
    eps, accuracy = _by_eps(eps, accuracy)
    if len(eps) < 2 or eps[-1] == eps[0]:
        return math.nan
    return float(np.sum(np.diff(eps) * (accuracy[1:] + accuracy[:-1]) / 2) / (eps[-1] - eps[0]))


def eps_below(eps: Any, accuracy: Any, level: float = LEVEL) -> float:
    """First eps where accuracy falls below `level`, linear between grid points (NaN if it never does)."""
    eps, accuracy = _by_eps(eps, accuracy)
    below = np.flatnonzero(accuracy < level)
    if len(below) == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(eps[0])
    a0, a1 = accuracy[i - 1], accuracy[i]
    return float(eps[i - 1] + (a0 - level) / (a0 - a1) * (eps[i] - eps[i - 1]))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """The summary table (see the module docstring), one row per model, numbers as numbers."""
    rows = headline(select_rows(df))
    attacks = curve_order(a for a in rows["attack"].unique() if a not in JACOBIAN_ATTACKS)
    with_values = {a for a in attacks if rows.loc[rows["attack"] == a, "value"].notna().any()}
    distance_attacks = sorted(set(DISTANCE_ATTACKS) | (with_values - {a for a in attacks if a.startswith("worst_case")}))
    records = []
    for _, group in rows.groupby("model_hash", sort=False):
        first, by_attack = group.iloc[0], dict(tuple(group.groupby("attack")))
        jac, jac_normalized = by_attack.get(JACOBIAN_ATTACK), by_attack.get(JACOBIAN_NORMALIZED)
        zero = group[(group["epsilon"] == 0) & (~group["attack"].isin(JACOBIAN_ATTACKS))].sort_values("attack")
        record = {
            "model": first["model"], "defense": first["defense"], "dataset": first["dataset"],
            "n": int(group["n"].min()), "seed": int(first["seed"]),
            "clean_accuracy": float(jac["accuracy"].iloc[-1]) if jac is not None else
            (float(zero["accuracy"].iloc[0]) if len(zero) else math.nan),
            "jacobian_norm_normalized": float(jac_normalized["value"].iloc[-1]) if jac_normalized is not None
            else math.nan,
            "jacobian_norm_pixel": float(jac["value"].iloc[-1]) if jac is not None else math.nan,
        }  # fmt: skip
        record["jacobian_norm"] = record["jacobian_norm_pixel"]  # its name before units were named
        for attack in distance_attacks:
            values = by_attack[attack]["value"].dropna() if attack in by_attack else pd.Series(dtype=float)
            record[f"{attack}_median_distance"] = float(values.iloc[-1]) if len(values) else math.nan
        for attack in attacks:
            sub = by_attack.get(attack, group.iloc[:0])
            record[f"auc_{attack}"] = auc(sub["epsilon"], sub["accuracy"])
            record[f"eps50_{attack}"] = eps_below(sub["epsilon"], sub["accuracy"]) if len(sub) else math.nan
        for attack in (a for a in attacks if not a.startswith("worst_case")):
            sub = by_attack.get(attack, group.iloc[:0])
            worst = by_attack.get(f"worst_case_{sub['norm'].iloc[0]}") if len(sub) else None
            found = optimality(sub, worst, record["clean_accuracy"]) if worst is not None else {}
            record[f"optimality_{attack}"] = float(np.mean(list(found.values()))) if found else math.nan
        record["flags"] = ";".join(sorted({f for fl in group["flags"] for f in str(fl).split(";") if f}))
        records.append(record)
    return pd.DataFrame(records)
