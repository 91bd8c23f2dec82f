"""Which rows a table, a figure or a check shows: one identity everywhere.

Of each (model, attack, norm), only the latest spec and protocol are current (those of its last
row: after a preset changes, or robench's protocol is bumped, old rows stay in the store but are no
longer drawn); of those, the evaluation on the most images, then the last seed; of duplicate ε rows,
the last. The worst case of each norm is shown as its own curve, `worst_case_<norm>`, first.
"""

from __future__ import annotations

import pandas as pd

from .csvfile import WORST_CASE


def current_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The current rows of a results table (see the module docstring), in their original order."""
    if df.empty:
        return df.reset_index(drop=True)
    df = df.reset_index(drop=True)
    df = df.assign(_eps=df["epsilon"].astype(float).round(9), _order=range(len(df)))
    protocol = df["protocol"] if "protocol" in df.columns else pd.Series(1, index=df.index)
    df = df.assign(_version=protocol.astype(str) + ":" + df["spec_hash"].astype(str))
    by = ["model_hash", "attack", "norm"]
    df = df[df["_version"] == df.groupby(by)["_version"].transform("last")]
    df = df[df["n"] == df.groupby(by)["n"].transform("max")]
    df = df[df["seed"] == df.groupby(by)["seed"].transform("last")]
    df = df.drop_duplicates(by + ["_eps"], keep="last")
    return df.assign(epsilon=df["_eps"]).drop(columns=["_eps", "_order", "_version"]).reset_index(drop=True)


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
