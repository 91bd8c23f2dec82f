"""Which rows a table, a figure or a check shows: one identity everywhere.

Of each (model, attack, norm), only the latest spec and protocol are current (those of its last
row: after a preset changes, or robench's protocol is bumped, old rows stay in the store but are no
longer drawn; a suite's rows of every carried grid are one spec, `derived.spec_family`); of those, the
evaluation on the most images, then the last seed; of duplicate ε rows, the one carrying the most
smaller ε (a suite's), then the last. Of the worst cases (one per evaluation size: a smaller evaluation's worst case also reads
the first outcomes of larger ones), those of the latest protocol, then of the evaluation combining the
most attacks, then the most images. An evaluation's worst-case rows are told apart by (model, norm, n,
seed, protocol), not by spec_hash: from protocol 3 each ε has its own (it names the ε' it carries). The
worst case of each norm is shown as its own curve, `worst_case_<norm>`, first.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .csvfile import WORST_CASE
from .derived import spec_family


def current_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The current rows of a results table (see the module docstring), in their original order."""
    if df.empty:
        return df.reset_index(drop=True)
    df = df.reset_index(drop=True)
    df = df.assign(_eps=df["epsilon"].astype(float).round(9), _order=range(len(df)))
    protocol = df["protocol"] if "protocol" in df.columns else pd.Series(1, index=df.index)
    params = df["attack_params"] if "attack_params" in df.columns else pd.Series("", index=df.index)
    family = [spec_family(h, p) for h, p in zip(df["spec_hash"], params)]
    df = df.assign(_version=protocol.astype(str) + ":" + pd.Series(family, index=df.index), _protocol=protocol,
                   _carried=params.map(_carried_count))  # fmt: skip
    by = ["model_hash", "attack", "norm"]
    worst = df["attack"] == WORST_CASE
    # a worst case is current when it combines the most attacks (then: the most images); others by age
    members = df["attack_params"].map(_member_count) if "attack_params" in df.columns else 0
    df = df.assign(_members=np.where(worst, members, 0))
    if worst.any():
        latest = df[worst].groupby(["model_hash", "norm"])["_protocol"].transform("max")
        df = df[~worst | (df["_protocol"] == latest.reindex(df.index))]
        worst = df["attack"] == WORST_CASE
    df = df.assign(_best=df.groupby(["model_hash", "norm", "n", "seed", "_protocol"])["_members"].transform("max"))
    top = df[worst].groupby(["model_hash", "norm"])["_best"].transform("max") if worst.any() else None
    if top is not None:
        df = df[~worst | (df["_best"] == top.reindex(df.index))]
        worst = df["attack"] == WORST_CASE
        largest = df[worst].groupby(["model_hash", "norm"])["n"].transform("max")
        df = df[~worst | (df["n"] == largest.reindex(df.index))]
    df = df[(df["attack"] == WORST_CASE) | (df["_version"] == df.groupby(by)["_version"].transform("last"))]
    df = df[df["n"] == df.groupby(by)["n"].transform("max")]
    df = df[df["seed"] == df.groupby(by)["seed"].transform("last")]
    # of a suite's rows at one ε, the one carrying the most smaller ε (the rest of its curve), then the last
    df = df.sort_values(["_carried", "_order"], kind="stable").drop_duplicates(by + ["_eps"], keep="last")
    df = df.sort_values("_order")
    return df.assign(epsilon=df["_eps"]).drop(columns=["_eps", "_order", "_version", "_protocol", "_members", "_best",
                                                       "_carried"]).reset_index(drop=True)  # fmt: skip


def _carried_count(params: str) -> int:
    """How many smaller ε a suite row carries breaks from (0 for every other row)."""
    if "carried_eps" not in str(params):
        return 0
    try:
        carried = json.loads(params).get("carried_eps", [])
    except (ValueError, AttributeError, TypeError):
        return 0
    return len(carried) if isinstance(carried, list) else 0


def _member_count(params: str) -> int:
    try:
        return len(json.loads(params).get("attacks", {}))
    except (ValueError, AttributeError, TypeError):
        return 0


def is_cascade_step(attack: str) -> bool:
    """`<suite>.<member>` rows: robust accuracy partway through a cascade (kept in the CSV, not drawn)."""
    return "." in attack


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """Rows worth a figure or a table: everything but the cascade's intermediate steps."""
    return df[~df["attack"].map(is_cascade_step)] if len(df) else df


def optimality(rows: pd.DataFrame, worst: pd.DataFrame, clean: float) -> dict[float, float]:
    """AttackBench's optimality of one attack (Cinà et al. 2024), per ε > 0: of the clean-correct
    examples the worst case breaks, the fraction this attack breaks too (1.0: as strong as the
    whole ensemble). Every example an attack of the ensemble breaks is broken by the worst case, so
    this is (clean - attack accuracy) / (clean - worst-case accuracy); ε where the worst case breaks
    nothing are left out."""
    out = {}
    by_eps = dict(zip(worst["epsilon"].round(9), worst["accuracy"]))
    for eps, acc in zip(rows["epsilon"].round(9), rows["accuracy"]):
        w = by_eps.get(eps)
        if eps > 0 and w is not None and clean - w > 1e-12:
            out[float(eps)] = float(min(1.0, max(0.0, (clean - acc) / (clean - w))))
    return out


def curve_name(attack: str, norm: str) -> str:
    """The name a curve, table or summary column goes by: the attack, or worst_case_<norm>."""
    return f"{WORST_CASE}_{norm}" if attack == WORST_CASE else attack


def with_curve_names(df: pd.DataFrame) -> pd.DataFrame:
    """`attack` replaced by its curve name (worst_case -> worst_case_linf, worst_case_l2)."""
    if df.empty:
        return df
    return df.assign(attack=[curve_name(a, n) for a, n in zip(df["attack"], df["norm"])])


def curve_order(names) -> list[str]:
    """Worst cases first (the robust accuracy robench stands behind), then the attacks by name."""
    return sorted(set(names), key=lambda a: (not a.startswith(WORST_CASE), a))
