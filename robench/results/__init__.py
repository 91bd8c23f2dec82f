"""Results: the store (SQLite, per-example outcomes), its tidy CSV export, intervals, selection.

The public entry points, unchanged in name since the CSV-only robench:
`read_results(path)`, `append_rows(path, rows)`, `check_writable(path)`, and new:
`outcomes(path)` (one row per example of every result row), `merge(paths, out)`.
`path` is always the CSV (results/mnist.csv) or its database (results/mnist.db).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..errors import RobenchError
from ..fileio import ensure_writable_dir
from .csvfile import (
    COLUMNS, JACOBIAN_ATTACK, JACOBIAN_ATTACKS, JACOBIAN_NORMALIZED, KEY, LEGACY_COLUMNS, LEGACY_PROTOCOL, WORST_CASE, done_keys, eps_key,
    median_or_inf, read_csv, row_key,
)  # fmt: skip
from .store import ResultsStore, store_paths

__all__ = [
    "COLUMNS", "JACOBIAN_ATTACK", "JACOBIAN_ATTACKS", "JACOBIAN_NORMALIZED", "KEY", "LEGACY_COLUMNS", "LEGACY_PROTOCOL", "WORST_CASE", "ResultsStore",
    "append_rows", "check_writable", "done_keys", "eps_key", "median_or_inf", "merge", "outcomes",
    "read_results", "row_key", "store_paths",
]  # fmt: skip


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """The result rows at `path`: from its database when there is one (the record), else the CSV alone
    (an empty table if neither exists)."""
    csv, db = store_paths(path)
    if db.is_file():
        with ResultsStore(db, readonly=True) as store:
            return store.table()
    return read_csv(csv)


def outcomes(path: str | os.PathLike, **where: Any) -> pd.DataFrame:
    """Per-example outcomes: one row per (model_hash, attack, spec_hash, epsilon, n, seed, example).

    Columns: the row key (with protocol and norm), `example` (index in the test set), `robust` (float
    in [0, 1]: 1 robust, 0 broken, a fraction of draws for repeated noise; for the jacobian_norm row:
    clean correctness), `distance` (minimization attacks' minimal distance, NaN for fixed-ε attacks)
    and `value` (the example's exact ||J||_F on jacobian_norm rows, else NaN). Rows written by robench
    before the store have no outcomes and do not appear. `where` filters on row columns, e.g.
    `outcomes(p, model_hash=h, attack="pgd")`.
    """
    csv, db = store_paths(path)
    if not db.is_file():
        if not csv.exists():
            raise RobenchError(f"no results at {path}")
        return pd.DataFrame(
            columns=["model_hash", "attack", "spec_hash", "epsilon", "n", "seed", "protocol", "norm", "example",
                     "robust", "distance", "value"])  # fmt: skip
    with ResultsStore(db, readonly=True) as store:
        return store.outcomes(**where)


def append_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Add rows (skipping keys already there) in one transaction, rewrite the CSV; returns every row.

    Outcome arrays may ride along as "_robust", "_distance", "_value" (see `ResultsStore.add`).
    """
    with ResultsStore(path) as store:
        store.add(rows, export=True)
        return store.table()


def check_writable(path: str | os.PathLike) -> Path:
    """Make sure the results can be written (directory, CSV, database) before any long work starts."""
    from ..fileio import refuse_special

    csv, db = store_paths(path)
    for target in (csv, db):
        ensure_writable_dir(target.parent, f"cannot write results to {target}")
        refuse_special(target)
    if not db.exists():
        read_csv(csv)  # refuse a foreign or corrupt CSV now, not after an hour of attacks
    with ResultsStore(csv):
        pass
    return csv


def merge(paths: list[str | os.PathLike], out: str | os.PathLike, *, models: dict[str, str] | None = None) -> int:
    """Combine the rows and outcomes of several stores (or CSVs) into `out`; returns the rows added.

    Rows already in `out` are kept (a row key found in several inputs counts once); worst cases and
    flags are recomputed per evaluation.

    Args:
        models: {model_hash: path} to write in the `model` column of those models' rows: a merged
            study names its own run directories, where the report finds each model's meta.json.
    """
    if not paths:
        raise RobenchError("name at least one results file to merge")
    sources = []
    out_csv, out_db = store_paths(out)
    for path in paths:
        csv, db = store_paths(path)
        if not csv.exists() and not db.exists():
            raise RobenchError(f"results file {path} not found")
        if (csv.resolve(), db.resolve()) == (out_csv.resolve(), out_db.resolve()):
            raise RobenchError(f"{path} is the merge's own --out")
        sources.append((csv, db))
    check_writable(out)
    added = 0
    with ResultsStore(out) as target:
        for csv, db in sources:
            if db.is_file():
                with ResultsStore(db, readonly=True) as source:
                    rows = [r for r in source.raw_rows() if r["attack"] != WORST_CASE]
            else:
                rows = [r for r in read_csv(csv).to_dict("records") if r["attack"] != WORST_CASE]
            clean = [{k: v for k, v in r.items() if k not in ("id", "derived", "outcomes", "ci_low", "ci_high")}
                     for r in rows]  # fmt: skip
            for row in clean:
                row["model"] = (models or {}).get(row["model_hash"], row["model"])
            added += target.add(clean, export=False)
        target.export()
    return added
