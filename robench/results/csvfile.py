"""The tidy results CSV: its columns, reading it (also one written by robench before the store), writing it.

The CSV is what a user opens with pandas; since the results store (`store.py`) it is an export of
the database beside it, rewritten atomically, and no longer the record itself. A CSV without a
database (written by robench 0.1 before protocol 2, or copied alone) still reads: its rows simply
have no per-example outcomes.

Columns (documented in the README):
    model, dataset, defense, attack, norm, epsilon, accuracy, n, seed, attack_params,
    robench_version, timestamp, model_hash, spec_hash, value, flags,
    ci_low, ci_high, protocol, grey_share, distinct_predictions, model_checks, attack_failure, outcomes

model_checks (JSON, from robench 0.1 protocol 3 on) holds what `robench.model_probes` measured on the
model at the evaluation that wrote the row: empty on older rows and on derived ones. attack_failure (JSON)
holds the indicators of attack failure of a traced gradient attack's row (`robench.attacks.failure`):
shares of the attacked examples; empty for other attacks and older rows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import RobenchError

LEGACY_COLUMNS = [
    "model", "dataset", "defense", "attack", "norm", "epsilon", "accuracy", "n", "seed",
    "attack_params", "robench_version", "timestamp", "model_hash", "spec_hash", "value", "flags",
]  # fmt: skip
NEW_COLUMNS = ["ci_low", "ci_high", "protocol", "grey_share", "distinct_predictions", "model_checks", "attack_failure",
               "outcomes"]  # fmt: skip
COLUMNS = LEGACY_COLUMNS + NEW_COLUMNS
TEXT_COLUMNS = {"model_hash": str, "spec_hash": str, "model": str, "flags": str, "model_checks": str,
                "attack_failure": str}  # fmt: skip  # never guessed as numbers
KEY = ["model_hash", "attack", "spec_hash", "epsilon", "n", "seed", "protocol"]
# Pseudo-attack rows of mean exact test ||J||_F (`value`; accuracy is the clean accuracy): jacobian_norm in
# pixel units (d logits / d pixel in [0, 1], what attacks see; its name predates units), and
# jacobian_norm_normalized in the paper's units (d logits / d normalized input), written when the
# model's input normalization is known.
JACOBIAN_ATTACK = "jacobian_norm"
JACOBIAN_NORMALIZED = "jacobian_norm_normalized"
JACOBIAN_ATTACKS = (JACOBIAN_ATTACK, JACOBIAN_NORMALIZED)
WORST_CASE = "worst_case"
LEGACY_PROTOCOL = 1  # rows without a protocol column: robench before per-example seeding


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV as it is on disk (an empty table if it does not exist), columns completed."""
    from ..fileio import refuse_special

    path = Path(path)
    refuse_special(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=TEXT_COLUMNS)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        raise RobenchError(f"{path} is not a readable CSV; move it away or choose another --out") from None
    missing = [c for c in ["model_hash", "attack", "spec_hash", "epsilon", "n", "seed", "accuracy"] if c not in df.columns]
    if missing:
        raise RobenchError(f"{path} is not a robench results CSV (missing columns: {', '.join(missing)})")
    return complete(df, where=str(path))


def complete(df: pd.DataFrame, *, where: str) -> pd.DataFrame:
    """Add the columns an older CSV lacks, with the meaning they had then, and check the numbers."""
    df = df.copy()
    if "protocol" not in df.columns:
        df["protocol"] = LEGACY_PROTOCOL
    if "outcomes" not in df.columns:
        df["outcomes"] = 0
    for column in COLUMNS:
        if column not in df.columns:
            df[column] = math.nan if column not in ("flags", "attack_params", "model_checks", "attack_failure") else ""
    for column in ("epsilon", "accuracy", "n", "seed", "protocol"):
        numbers = pd.to_numeric(df[column], errors="coerce")
        if numbers.isna().any():
            raise _bad_cell(where, df, column, numbers.isna(), "is not a number")
        df[column] = numbers
    for column, (low, high) in RANGES.items():
        values = df[column].astype(float)
        outside = ~((values >= low) & (values <= high))
        if outside.any():
            raise _bad_cell(where, df, column, outside, f"is outside [{low:g}, {high:g}]")
    for column in ("n", "seed", "protocol"):
        fractional = df[column].astype(float) % 1 != 0
        if fractional.any():
            raise _bad_cell(where, df, column, fractional, "is not a whole number")
        df[column] = df[column].astype("int64")
    for column in ("value", "ci_low", "ci_high", "grey_share", "distinct_predictions", "outcomes"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    for column in ("ci_low", "ci_high", "grey_share"):
        outside = df[column].notna() & ~df[column].between(0, 1)
        if outside.any():
            raise _bad_cell(where, df, column, outside, "is outside [0, 1]")
    df["outcomes"] = df["outcomes"].fillna(0).astype("int64")
    for column in ("model", "dataset", "defense", "attack", "norm", "model_hash", "spec_hash", "attack_params",
                   "robench_version", "timestamp", "model_checks", "attack_failure"):  # fmt: skip
        df[column] = df[column].astype(object).where(df[column].notna(), "").astype(str)
    flags = df["flags"]
    df["flags"] = flags.astype(object).where(flags.notna(), "").astype(str)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


# What each number may be: accuracies are fractions, n counts test images, epsilons are finite.
RANGES = {"accuracy": (0.0, 1.0), "epsilon": (0.0, 1e12), "n": (0, 1e12), "seed": (0, 2**63 - 1), "protocol": (0, 1e6)}


def _bad_cell(where: str, df: pd.DataFrame, column: str, mask: pd.Series, problem: str) -> RobenchError:
    """One line naming the file, the first bad row (as a CSV line number: header = line 1) and the cell."""
    position = int(mask.to_numpy().nonzero()[0][0])
    value = df[column].iloc[position]
    row = f"line {position + 2}" if str(where).endswith(".csv") else f"row {position + 1}"
    return RobenchError(f"{where} is not a valid robench results file: {row}, column {column}: '{value}' {problem}")


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a result row; epsilon rounded so 0.1 read back from CSV matches 0.1."""
    return (str(row["model_hash"]), str(row["attack"]), str(row["spec_hash"]), eps_key(row["epsilon"]),
            int(row["n"]), int(row["seed"]), int(row.get("protocol", LEGACY_PROTOCOL)))  # fmt: skip


def eps_key(eps: Any) -> float:
    return round(float(eps), 12)


def done_keys(df: pd.DataFrame) -> set[tuple]:
    """Keys of the rows already in a results table."""
    return {row_key(r) for r in df.to_dict("records")}


def median_or_inf(values) -> float:
    """Median of distances where inf means 'never broken' (so the median may itself be inf)."""
    values = sorted(float(v) for v in values)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
