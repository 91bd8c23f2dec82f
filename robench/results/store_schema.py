"""The results database's file format: its schema and migrations, the path pair (CSV, database), how
per-example outcome arrays are packed, and the retry SQLite needs around a journal-mode change. Kept apart
from `store.py` (what the store does with rows) so the format reads in one place."""

from __future__ import annotations

import math
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 600.0
MIGRATIONS = {  # version -> statements; applied in order to bring an older database up to SCHEMA_VERSION
    1: [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
        """CREATE TABLE IF NOT EXISTS rows (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT, dataset TEXT, defense TEXT, attack TEXT NOT NULL, norm TEXT,
            epsilon REAL NOT NULL, accuracy REAL, n INTEGER NOT NULL, seed INTEGER NOT NULL,
            attack_params TEXT, robench_version TEXT, timestamp TEXT, model_hash TEXT NOT NULL,
            spec_hash TEXT NOT NULL, value REAL, flags TEXT NOT NULL DEFAULT '',
            ci_low REAL, ci_high REAL, protocol INTEGER NOT NULL, grey_share REAL, distinct_predictions INTEGER,
            eps_key REAL NOT NULL, derived INTEGER NOT NULL DEFAULT 0, csv_line TEXT,
            UNIQUE (model_hash, attack, spec_hash, eps_key, n, seed, protocol))""",
        "CREATE INDEX IF NOT EXISTS rows_by_evaluation ON rows (model_hash, n, seed, protocol)",
        """CREATE TABLE IF NOT EXISTS outcomes (
            row_id INTEGER PRIMARY KEY REFERENCES rows(id) ON DELETE CASCADE,
            count INTEGER NOT NULL, robust BLOB NOT NULL, distance BLOB, value BLOB)""",
    ],
    2: ["ALTER TABLE rows ADD COLUMN model_checks TEXT"],  # robench.model_probes; older rows: NULL
    3: ["ALTER TABLE rows ADD COLUMN attack_failure TEXT"],  # robench.attacks.failure; older rows: NULL
}


def while_locked(step, timeout_s: float = BUSY_TIMEOUT_S) -> None:
    """Run `step`, retrying while another process holds the database: changing the journal mode needs an
    exclusive lock and SQLite answers "database is locked" at once there instead of waiting its busy
    timeout (seen when two evaluations open a new store at the same moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def store_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(CSV, database) for a results path given as either: x.csv <-> x.db."""
    path = Path(path)
    if path.suffix == ".db":
        return path.with_suffix(".csv"), path
    return path, path.with_suffix(".db") if path.suffix else path.with_name(path.name + ".db")


def pack(values: Any) -> bytes | None:
    """A 1-D float64 array as compressed bytes (None stays None)."""
    if values is None:
        return None
    return zlib.compress(np.ascontiguousarray(np.asarray(values, dtype="<f8")).tobytes(), 6)


def unpack(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(zlib.decompress(blob), dtype="<f8")



def sql_value(value: Any) -> Any:
    """Python/numpy scalars as SQLite values (NaN as NULL)."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value
