"""Rich tables of results: one per attack (models as rows, epsilons as columns), one of clean metrics."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from .results import JACOBIAN_ATTACK


def _label(model: str) -> str:
    return model.rstrip("/").split("/")[-1] or model


def clean_table(df: pd.DataFrame) -> Table:
    """Clean accuracy and mean exact test ||J||_F per model."""
    table = Table(title="clean accuracy and Jacobian norm")
    for column in ("model", "defense", "n", "clean accuracy", "mean ||J||_F"):
        table.add_column(column, justify="left" if column in ("model", "defense") else "right")
    rows = df[df["attack"] == JACOBIAN_ATTACK].sort_values("n", kind="stable")
    for row in rows.drop_duplicates("model_hash", keep="last").to_dict("records"):  # largest n per model
        table.add_row(_label(row["model"]), row["defense"], str(int(row["n"])),
                      f"{row['accuracy']:.4f}", f"{row['value']:.3f}")  # fmt: skip
    return table


def attack_tables(df: pd.DataFrame) -> list[Table]:
    """Accuracy vs epsilon, one table per attack; CW tables add the median minimal distance."""
    tables = []
    attacks = df[df["attack"] != JACOBIAN_ATTACK]
    for attack, group in attacks.groupby("attack", sort=True):
        epsilons = sorted(group["epsilon"].unique())
        sizes = "/".join(str(int(n)) for n in sorted(group["n"].unique()))
        table = Table(title=f"{attack} ({group['norm'].iloc[0]}, n={sizes}): accuracy vs epsilon")
        table.add_column("model")
        table.add_column("defense")
        for eps in epsilons:
            table.add_column(f"{eps:g}", justify="right")
        has_median = group["value"].notna().any()
        if has_median:
            table.add_column("median dist", justify="right")
        for model, rows in group.groupby("model", sort=False):
            by_eps = dict(zip(rows["epsilon"], rows["accuracy"]))
            cells = [f"{by_eps[e]:.3f}" if e in by_eps else "" for e in epsilons]
            if has_median:
                median = rows["value"].dropna()
                cells.append(_fmt(median.iloc[-1]) if len(median) else "")
            flags = "; ".join(sorted({f for fl in rows["flags"] for f in str(fl).split(";") if f}))
            table.add_row(_label(model), rows["defense"].iloc[0] + (f" [yellow]⚠ {flags}" if flags else ""), *cells)
        tables.append(table)
    return tables


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3f}"
