"""The results CSV: one tidy row per (model, attack, epsilon), appended atomically, resumable.

Columns (documented in the README):
    model, dataset, defense, attack, norm, epsilon, accuracy, n, seed, attack_params,
    robench_version, timestamp, model_hash, spec_hash, value, flags
`value` holds the model's mean exact test ||J||_F on rows with attack "jacobian_norm" (whose
`accuracy` is the clean accuracy), and the median minimal adversarial distance on rows of
minimization attacks (CW; inf when fewer than half the examples could be broken).
A row is identified by (model_hash, attack, spec_hash, epsilon, n, seed): rows already present are
skipped, so an interrupted evaluation resumes where it stopped and a rerun costs nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .errors import RobenchError
from .fileio import ensure_writable_dir, write_atomic

COLUMNS = [
    "model", "dataset", "defense", "attack", "norm", "epsilon", "accuracy", "n", "seed",
    "attack_params", "robench_version", "timestamp", "model_hash", "spec_hash", "value", "flags",
]  # fmt: skip
TEXT_COLUMNS = {"model_hash": str, "spec_hash": str, "model": str, "flags": str}  # never guessed as numbers
KEY = ["model_hash", "attack", "spec_hash", "epsilon", "n", "seed"]
JACOBIAN_ATTACK = "jacobian_norm"


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV (an empty table if the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=TEXT_COLUMNS)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        raise RobenchError(f"{path} is not a readable CSV; move it away or choose another --out") from None
    missing = [c for c in KEY + ["accuracy"] if c not in df.columns]
    if missing:
        raise RobenchError(f"{path} is not a robench results CSV (missing columns: {', '.join(missing)})")
    flags = df["flags"] if "flags" in df.columns else pd.Series("", index=df.index)
    df["flags"] = flags.astype(object).where(flags.notna(), "").astype(str)
    return df


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a result row; epsilon rounded so 0.1 read back from CSV matches 0.1."""
    return (str(row["model_hash"]), str(row["attack"]), str(row["spec_hash"]),
            round(float(row["epsilon"]), 12), int(row["n"]), int(row["seed"]))  # fmt: skip


def done_keys(df: pd.DataFrame) -> set[tuple]:
    """Keys of the rows already in a results table."""
    return {row_key(r) for r in df.to_dict("records")}


def append_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Add rows to the CSV at `path` (skipping keys already there), recompute flags, write atomically.

    Returns the whole table as written.
    """
    from .checks import flag_rows

    path = Path(path)
    df = read_results(path)
    seen = done_keys(df)
    new = [r for r in rows if row_key(r) not in seen]
    if new:
        df = pd.concat([df, pd.DataFrame(new)], ignore_index=True) if len(df) else pd.DataFrame(new)
    df = df.reindex(columns=COLUMNS + [c for c in df.columns if c not in COLUMNS])
    df["flags"] = _flags(df, flag_rows)
    write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))
    return df


def _flags(df: pd.DataFrame, flag_rows) -> pd.Series:
    """Honesty flags computed within each evaluation (same model file, n and seed)."""
    flags = pd.Series("", index=df.index, dtype=object)
    for _, group in df.groupby(["model_hash", "n", "seed"], sort=False):
        flags.loc[group.index] = flag_rows(group).astype(str).values
    return flags


def check_writable(path: str | os.PathLike) -> Path:
    """Make sure the CSV's directory exists and is writable before any long work starts."""
    path = Path(path)
    ensure_writable_dir(path.parent, f"cannot write results to {path}")
    if path.exists() and path.is_dir():
        raise RobenchError(f"cannot write results to {path}: it is a directory")
    read_results(path)  # refuse a foreign or corrupt CSV now, not after an hour of attacks
    return path


def median_or_inf(values) -> float:
    """Median of distances where inf means 'never broken' (so the median may itself be inf)."""
    values = sorted(float(v) for v in values)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
