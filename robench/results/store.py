"""The results store: an SQLite database beside the CSV, safe under concurrent writers, resumable.

`results/mnist.csv` is backed by `results/mnist.db`. Each finished result row is one transaction
(`BEGIN IMMEDIATE`: writers queue on SQLite's lock, WAL mode lets readers go on): the row, its
per-example outcomes (zlib-compressed float64 arrays), its 95% interval, and what it changes in its
own evaluation only, i.e. the same (model_hash, n, seed, protocol): the `worst_case` rows and the
honesty flags. So the work of an append does not grow with the file, and two jobs writing one store
never lose a row. The CSV is rewritten from the database, atomically and while holding the write lock
(so an older snapshot can never overwrite a newer one): after a commit once EXPORT_INTERVAL_S has
passed since the last export, and always when the store is closed. The database is the record; a
killed job's last seconds reach the CSV at the next open or close of the store.

SQLite must not be shared over NFS or other network file systems (its locks are not reliable
there): jobs on separate machines write separate stores and `robench merge` combines them.
A CSV without a database (robench before the store) is imported once, when a store is first opened
on it; its rows keep their meaning (protocol 1) and have no outcomes.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import RobenchError
from ..fileio import write_atomic
from .csvfile import COLUMNS, JACOBIAN_ATTACK, JACOBIAN_ATTACKS, WORST_CASE, complete, eps_key, read_csv
from .store_schema import BUSY_TIMEOUT_S, MIGRATIONS, SCHEMA_VERSION, pack, sql_value, store_paths, unpack, while_locked

EXPORT_INTERVAL_S = 2.0
ROW_FIELDS = [c for c in COLUMNS if c != "outcomes"]


class ResultsStore:
    """One results database (and its CSV export). Use as a context manager; `close()` exports.

    Args:
        path: the CSV path (results/mnist.csv) or the database path (results/mnist.db).
        relations: {attack: Relation} for the worst case and the checks (default: the packaged specs).
    """

    def __init__(self, path: str | os.PathLike, *, relations: dict | None = None, readonly: bool = False):
        from ..attacks import relations as spec_relations
        from ..fileio import refuse_special

        self.csv_path, self.db_path = store_paths(path)
        self.relations = spec_relations() if relations is None else relations
        self._dirty, self._last_export = False, time.monotonic()
        self._per_example: frozenset[str] | None = None
        for target in (self.csv_path, self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm")):
            refuse_special(target)  # sqlite would block forever on a FIFO
        try:
            # A reader of an up-to-date database opens it read-only: reading results never changes a byte
            # of them. An older schema (or a new file) is opened for writing, to be migrated first.
            if readonly and self.db_path.is_file() and self._open_readonly():
                return
            self.conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            while_locked(self._use_wal)
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            with self._write():
                self._migrate()
                self._import_legacy_csv()
        except sqlite3.DatabaseError as exc:
            raise RobenchError(f"{self.db_path} is not a robench results database ({exc})") from None
        except sqlite3.Error as exc:
            raise RobenchError(f"cannot open results database {self.db_path}: {exc}") from None

    def _use_wal(self) -> None:
        """WAL is a property of the file: set once, by whichever process creates the database."""
        if str(self.conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            self.conn.execute("PRAGMA journal_mode=WAL")

    def _open_readonly(self) -> bool:
        """Open the database read-only; False (closed again) when it needs a migration or an import."""
        from urllib.parse import quote

        uri = f"file:{quote(str(self.db_path.resolve()))}?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        has_meta = self.conn.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone()
        found = dict(self.conn.execute("SELECT key, value FROM meta").fetchall()) if has_meta else {}
        if found.get("schema_version") == str(SCHEMA_VERSION) and "csv_imported" in found:
            return True
        self.conn.close()
        return False

    # -- transactions -------------------------------------------------------------------------
    def _write(self):
        store = self

        class _Txn:
            def __enter__(self):
                store.conn.execute("BEGIN IMMEDIATE")
                return store.conn

            def __exit__(self, kind, exc, tb):
                store.conn.execute("COMMIT" if kind is None else "ROLLBACK")
                return False

        return _Txn()

    def _migrate(self) -> None:
        exists = self.conn.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone()
        version = 0
        if exists:
            found = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(found[0]) if found else 0
        if version > SCHEMA_VERSION:
            raise RobenchError(f"{self.db_path} was written by a newer robench (schema {version}); upgrade robench")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[v]:
                self.conn.execute(statement)
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if 0 < version < SCHEMA_VERSION:  # the stored CSV lines lack the new columns: write them again
            for group in self.conn.execute("SELECT DISTINCT model_hash, n, seed, protocol FROM rows").fetchall():
                self._relines(tuple(group))
            self._dirty = True

    def _import_legacy_csv(self) -> None:
        """Once per database: rows of a CSV that predates it (or was copied without it), outcomes none."""
        if self.conn.execute("SELECT value FROM meta WHERE key='csv_imported'").fetchone():
            return
        self.conn.execute("INSERT INTO meta VALUES ('csv_imported', ?)", (time.strftime("%Y-%m-%dT%H:%M:%S"),))
        if not self.csv_path.exists():
            return
        df = read_csv(self.csv_path)
        df = df[df["attack"] != WORST_CASE]  # derived: cannot be recomputed without outcomes
        rows = [{k: v for k, v in r.items() if k != "outcomes"} for r in df.to_dict("records")]
        groups = {self._insert(row) for row in rows} - {None}
        for group in groups:
            self._refresh(group)
            self._relines(group)
        self._dirty = True

    # -- writing ------------------------------------------------------------------------------
    def add(self, rows: Iterable[dict[str, Any]], *, export: bool | None = None) -> int:
        """Insert rows (skipping keys already present) in one transaction; returns how many were new.

        A row dict has the CSV's fields; per-example outcomes ride along as numpy arrays under
        "_robust" (in [0, 1]), "_distance" (minimization attacks) and "_value" (the per-example
        ||J||_F of the jacobian_norm row). `export`: True always rewrites the CSV, None when due.
        """
        with self._write():
            inserted = [self._insert(dict(row)) for row in rows]
            new = {g for g in inserted if g is not None}
            for group in sorted(self._affected(new)):
                self._refresh(group)
                self._relines(group)
        if new:
            self._dirty = True
        if export or (export is None and self._dirty and time.monotonic() - self._last_export >= EXPORT_INTERVAL_S):
            self.export()
        return sum(g is not None for g in inserted)

    def _insert(self, row: dict[str, Any]) -> tuple | None:
        """INSERT OR IGNORE one row and its outcomes; its evaluation's key if it was new."""
        from .stats import proportion_ci

        row.setdefault("protocol", _current_protocol())
        row.setdefault("flags", "")
        robust, distance, value = row.pop("_robust", None), row.pop("_distance", None), row.pop("_value", None)
        if robust is not None and len(robust) != int(row["n"]):
            raise RobenchError(f"{len(robust)} outcomes for a row of n={row['n']}")
        low, high = proportion_ci(float(row["accuracy"]), int(row["n"]))
        row["ci_low"], row["ci_high"] = low, high
        values = [sql_value(row.get(c)) for c in ROW_FIELDS]
        cursor = self.conn.execute(
            f"INSERT OR IGNORE INTO rows ({', '.join(ROW_FIELDS)}, eps_key, derived) "
            f"VALUES ({', '.join('?' * len(ROW_FIELDS))}, ?, ?)",
            values + [eps_key(row["epsilon"]), int(row["attack"] == WORST_CASE)],
        )
        if cursor.rowcount == 0:
            return None
        if robust is not None:
            self.conn.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?)",
                              (cursor.lastrowid, len(robust), pack(robust), pack(distance), pack(value)))  # fmt: skip
        return (str(row["model_hash"]), int(row["n"]), int(row["seed"]), int(row["protocol"]))

    def _affected(self, groups: set[tuple]) -> set[tuple]:
        """The evaluations a new row can change: its own, and those of the same model, seed and
        protocol on fewer images (their worst case reads the first n outcomes of larger evaluations)."""
        out = set(groups)
        for model_hash, n, seed, protocol in groups:
            for (smaller,) in self.conn.execute("SELECT DISTINCT n FROM rows WHERE model_hash=? AND seed=? AND "
                                                "protocol=? AND n<?", (model_hash, seed, protocol, n)):  # fmt: skip
                out.add((model_hash, int(smaller), seed, protocol))
        return out

    def _prefix_rows(self, group: tuple) -> list[dict[str, Any]]:
        """Rows of the same model, seed and protocol on more than n images, outcomes cut to the first n,
        where those are exactly what an evaluation of the first n images gives: they may join its worst case.

        Random starts and noise are drawn per example, so a per-example attack's first n outcomes never
        depend on how many images it ran on. Attacks that couple examples (CW, DDN, Square and suites
        holding one) run on fixed chunks of CHUNK images: a run on n images cuts its last chunk short when
        n is not a multiple of CHUNK, and then gives other outcomes there. From protocol 3 such rows join
        only when n is a multiple of CHUNK; older protocols keep the reuse they were made with.
        """
        from ..attacks import CHUNK
        from .derived import CARRY_PROTOCOL

        model_hash, n, seed, protocol = group
        larger = [g[0] for g in self.conn.execute("SELECT DISTINCT n FROM rows WHERE model_hash=? AND seed=? AND "
                                                  "protocol=? AND n>?", (model_hash, seed, protocol, n))]  # fmt: skip
        rows = [r for m in sorted(larger) for r in self._group_rows((model_hash, m, seed, protocol), with_outcomes=True)
                if not r["derived"] and r["attack"] not in JACOBIAN_ATTACKS]  # fmt: skip
        if rows and protocol >= CARRY_PROTOCOL and n % CHUNK:
            exact = self._per_example_attacks()
            rows = [r for r in rows if r["attack"].split(".")[0] in exact]  # a cascade step: as its suite
        for r in rows:
            r["n"] = n
            for key in ("_robust", "_distance"):
                if r[key] is not None:
                    r[key] = r[key][:n]
        return rows

    def _per_example_attacks(self) -> frozenset[str]:
        """The packaged attacks and suites whose outcomes are per example (loaded once, when first needed:
        this imports Foolbox). An attack no longer among them is taken as chunked: never reused wrongly."""
        if self._per_example is None:
            from ..attacks import per_example_names

            self._per_example = per_example_names()
        return self._per_example

    def _group_rows(self, group: tuple, *, with_outcomes: bool) -> list[dict[str, Any]]:
        blobs = ", o.robust, o.distance, o.value" if with_outcomes else ", NULL, NULL, NULL"
        cursor = self.conn.execute(
            f"SELECT r.id, {', '.join('r.' + c for c in ROW_FIELDS)}, r.derived{blobs} FROM rows r "
            "LEFT JOIN outcomes o ON o.row_id = r.id "
            "WHERE r.model_hash = ? AND r.n = ? AND r.seed = ? AND r.protocol = ? ORDER BY r.id", group,
        )  # fmt: skip
        out = []
        for record in cursor.fetchall():
            row = dict(zip(["id", *ROW_FIELDS, "derived"], record[: len(ROW_FIELDS) + 2]))
            row["_robust"], row["_distance"], row["_value"] = (unpack(b) for b in record[len(ROW_FIELDS) + 2:])
            out.append(row)
        return out

    def _refresh(self, group: tuple) -> None:
        """Recompute one evaluation's worst_case rows and every flag of its rows (inside a transaction)."""
        from ..checks import flag_rows
        from .derived import worst_case_rows
        from .stats import proportion_ci

        rows = self._group_rows(group, with_outcomes=True)
        members = self._prefix_rows(group) + rows  # this evaluation's own rows last: they are the latest
        wanted = {(r["norm"], eps_key(r["epsilon"])): r for r in worst_case_rows(members, self.relations)}
        for old in (r for r in rows if r["derived"]):
            key = (old["norm"], eps_key(old["epsilon"]))
            if key not in wanted or wanted[key]["spec_hash"] != old["spec_hash"]:
                self.conn.execute("DELETE FROM rows WHERE id = ?", (old["id"],))
                continue
            new = wanted.pop(key)
            low, high = proportion_ci(new["accuracy"], int(new["n"]))
            self.conn.execute("UPDATE rows SET accuracy=?, attack_params=?, timestamp=?, ci_low=?, ci_high=? "
                              "WHERE id=?", (new["accuracy"], new["attack_params"], new["timestamp"], low, high,
                                             old["id"]))  # fmt: skip
            self.conn.execute("UPDATE outcomes SET robust=?, count=? WHERE row_id=?",
                              (pack(new["_robust"]), len(new["_robust"]), old["id"]))  # fmt: skip
        for new in wanted.values():
            self._insert(new)
        rows = self._group_rows(group, with_outcomes=False)
        df = complete(pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]),
                      where=str(self.db_path))  # fmt: skip
        flags = flag_rows(df, relations=self.relations)
        for row_id, old, new in zip(df["id"], df["flags"], flags):
            if old != new:
                self.conn.execute("UPDATE rows SET flags = ? WHERE id = ?", (new, int(row_id)))

    # -- reading ------------------------------------------------------------------------------
    def done(self, model_hash: str, n: int, seed: int, protocol: int) -> set[tuple[str, str, float]]:
        """(attack, spec_hash, eps_key) of the rows one evaluation already has."""
        cursor = self.conn.execute("SELECT attack, spec_hash, eps_key FROM rows WHERE model_hash=? AND n=? AND "
                                   "seed=? AND protocol=?", (model_hash, int(n), int(seed), int(protocol)))  # fmt: skip
        return {(a, s, float(e)) for a, s, e in cursor.fetchall()}

    def model_checks(self, model_hash: str, n: int, seed: int, protocol: int) -> str | None:
        """The model checks (`robench.model_probes`, JSON) the evaluation's latest row recorded, or None."""
        found = self.conn.execute("SELECT model_checks FROM rows WHERE model_hash=? AND n=? AND seed=? AND "
                                  "protocol=? AND model_checks IS NOT NULL ORDER BY id DESC LIMIT 1",
                                  (model_hash, int(n), int(seed), int(protocol))).fetchone()  # fmt: skip
        return None if found is None else found[0]

    def robust_vector(self, row: dict[str, Any]):
        """The per-example `robust` outcomes of the row with `row`'s key, or None."""
        found = self.conn.execute(
            "SELECT o.robust FROM rows r JOIN outcomes o ON o.row_id = r.id WHERE r.model_hash=? AND r.attack=? "
            "AND r.spec_hash=? AND r.eps_key=? AND r.n=? AND r.seed=? AND r.protocol=?",
            (row["model_hash"], row["attack"], row["spec_hash"], eps_key(row["epsilon"]), int(row["n"]),
             int(row["seed"]), int(row["protocol"])),
        ).fetchone()  # fmt: skip
        return None if found is None else unpack(found[0])

    def table(self, model_hashes: Iterable[str] | None = None) -> pd.DataFrame:
        """The result rows (all, or of some models) as the CSV has them, in insertion order."""
        sql = (f"SELECT {', '.join('r.' + c for c in ROW_FIELDS)}, COALESCE(o.count, 0) AS outcomes FROM rows r "
               "LEFT JOIN outcomes o ON o.row_id = r.id")  # fmt: skip
        params: list = []
        if model_hashes is not None:
            hashes = list(model_hashes)
            sql += f" WHERE r.model_hash IN ({', '.join('?' * len(hashes))})"
            params = hashes
        df = pd.read_sql_query(sql + " ORDER BY r.id", self.conn, params=params)
        return complete(df, where=str(self.db_path)) if len(df) else pd.DataFrame(columns=COLUMNS)

    def outcomes(self, **where: Any) -> pd.DataFrame:
        """One row per (row key, example): robust, distance (NaN for fixed-ε attacks), value (||J||_F)."""
        clauses = [f"r.{k} = ?" for k in where]
        sql = ("SELECT r.model_hash, r.attack, r.spec_hash, r.epsilon, r.n, r.seed, r.protocol, r.norm, "
               "o.robust, o.distance, o.value FROM rows r JOIN outcomes o ON o.row_id = r.id"
               + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY r.id")  # fmt: skip
        frames = []
        for *key, robust, distance, value in self.conn.execute(sql, list(where.values())).fetchall():
            robust = unpack(robust)
            count = len(robust)
            nan = np.full(count, math.nan)
            frame = pd.DataFrame({"example": np.arange(count), "robust": robust,
                                  "distance": unpack(distance) if distance is not None else nan,
                                  "value": unpack(value) if value is not None else nan})  # fmt: skip
            for name, item in zip(OUTCOME_KEY[::-1], key[::-1]):
                frame.insert(0, name, item)
            frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=OUTCOME_KEY + ["example", "robust", "distance", "value"])
        return pd.concat(frames, ignore_index=True)

    def raw_rows(self) -> list[dict[str, Any]]:
        """Every row with its outcome arrays (for merging stores)."""
        groups = self.conn.execute("SELECT DISTINCT model_hash, n, seed, protocol FROM rows").fetchall()
        return [r for g in groups for r in self._group_rows(tuple(g), with_outcomes=True)]

    # -- the CSV ------------------------------------------------------------------------------
    def _relines(self, group: tuple) -> None:
        """Store each row's CSV line (inside the transaction that changed its evaluation), so an export
        is one scan of ready text: the one step whose cost grows with the store stays cheap."""
        sql = (f"SELECT r.id, {', '.join('r.' + c for c in ROW_FIELDS)}, COALESCE(o.count, 0) FROM rows r "
               "LEFT JOIN outcomes o ON o.row_id = r.id "
               "WHERE r.model_hash = ? AND r.n = ? AND r.seed = ? AND r.protocol = ?")  # fmt: skip
        for row_id, *values in self.conn.execute(sql, group).fetchall():
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow(values)
            self.conn.execute("UPDATE rows SET csv_line = ? WHERE id = ?", (buffer.getvalue(), row_id))

    def export(self) -> None:
        """Rewrite the CSV from the database, atomically, holding the write lock (newest state wins)."""
        header = ",".join(COLUMNS) + "\n"

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                handle.write(header)
                handle.writelines(line for (line,) in self.conn.execute("SELECT csv_line FROM rows ORDER BY id"))

        with self._write():
            write_atomic(self.csv_path, write)
        self._dirty, self._last_export = False, time.monotonic()

    def close(self) -> None:
        """Export what is not yet in the CSV, then close the database."""
        try:
            if self._dirty:
                self.export()
        finally:
            self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


OUTCOME_KEY = ["model_hash", "attack", "spec_hash", "epsilon", "n", "seed", "protocol", "norm"]


def _current_protocol() -> int:
    from ..attacks import PROTOCOL

    return PROTOCOL


__all__ = ["ResultsStore", "store_paths", "JACOBIAN_ATTACK"]
