"""Study bundles: a slice of a study (some defenses x seeds) as one small .tar.gz, and their merge.

A GPU job runs `reproduce_mnist` on a slice, `write_bundle` packs what the tables need (the results
store with its per-example outcomes, each run's log.csv and meta.json, claims, report, timings) and
a manifest, bundle.json; weights and optimizer states stay behind (megabytes per run, and the merge
never needs them: claims read the model hashes from the manifest and clean correctness from the
store's ε = 0 outcomes). `merge_bundles` unites slices into one study directory whose claims and
report are those of a study that ran everything at once. bundle.json:
    format, version, created, merged (bool), runs {name: {model_hash, defense, seed, epochs_done,
    finished}}, configs [ReproduceConfig dicts, one per slice], defenses, seeds (their union),
    extra (the caller's: device, timings...), versions, sources (a merge: each slice's created/extra/versions).
A bundle is data from another machine: members are checked (regular files and folders of the known
layout only, no absolute path, no `..`) before anything is extracted, with tarfile's "data" filter too.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import RobenchError

FORMAT, VERSION, MANIFEST = "robench-bundle", 1, "bundle.json"
TOP_FILES = ("results.csv", "claims.md", "claims.csv", "timings.json")  # and results.db, from a snapshot
RUN_FILES = ("log.csv", "meta.json")
REPORT_SUFFIXES = (".md", ".csv", ".png", ".svg", ".pdf", ".html")
MAX_HTML, MAX_BYTES, MAX_MANIFEST = 1 << 20, 4 << 30, 16 << 20  # skip a big report.html; refuse bombs
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")
HASH = re.compile(r"[0-9a-f]{16}")
LIBRARIES = ("robench", "torch", "torchvision", "numpy", "foolbox")


def library_versions() -> dict[str, str]:
    """Python's and the installed libraries' versions, from package metadata (nothing is imported)."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_bundle(study_dir: str | os.PathLike, dest: str | os.PathLike, *, config: Any = None,
                 extra: dict | None = None) -> Path:  # fmt: skip
    """Pack a study directory into one .tar.gz at `dest` (atomically): everything but the weights.

    Args:
        study_dir: a `reproduce_mnist` --out (or a merged study: its hashes come from its bundle.json).
        dest: the bundle file to write.
        config: the study's ReproduceConfig, recorded so a merge can describe and check the study.
        extra: anything JSON the caller wants kept (device name, torch version, timings...).
    """
    from dataclasses import asdict

    from .fileio import ensure_writable_dir, write_atomic

    study = Path(study_dir)
    ensure_writable_dir(Path(dest).parent, f"cannot write the bundle {dest}")
    if not (study / "runs").is_dir() or not (study / "results.db").is_file():
        raise RobenchError(f"{study} is not a study directory (it needs runs/ and results.db)")
    previous = load_manifest(study) if (study / MANIFEST).is_file() else None
    configs = [asdict(config)] if config is not None else list((previous or {}).get("configs", []))
    manifest = {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "merged": bool(previous and previous.get("merged")), "runs": _run_entries(study, previous),
                "configs": configs, "extra": extra or {}, "versions": library_versions(),
                "sources": (previous or {}).get("sources", [])}  # fmt: skip
    manifest.update(study_grid(configs, manifest["runs"]))
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RobenchError(f"the bundle's config and extra must be plain JSON values ({exc})") from None
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=Path(dest).parent) as tmp:
        (Path(tmp) / MANIFEST).write_text(text + "\n")
        _snapshot(study / "results.db", Path(tmp) / "results.db")
        members = [(MANIFEST, Path(tmp) / MANIFEST), ("results.db", Path(tmp) / "results.db")]
        members += [(name, study / name) for name in TOP_FILES if (study / name).is_file()]
        for name in manifest["runs"]:
            members += [(f"runs/{name}/{f}", study / "runs" / name / f) for f in RUN_FILES
                        if (study / "runs" / name / f).is_file()]  # fmt: skip
        if (study / "report").is_dir():
            members += [(f"report/{p.name}", p) for p in sorted((study / "report").iterdir())
                        if _report_file(p) and SAFE_NAME.fullmatch(p.name)]  # fmt: skip
        write_atomic(dest, lambda path: _tar(path, members))
    return Path(dest)


def _run_entries(study: Path, previous: dict | None) -> dict[str, dict]:
    """The manifest's runs: the weights' hash (the id result rows carry) and what meta.json says."""
    from .checkpoint import MODEL_FILE, read_meta
    from .sources import file_hash

    runs = {}
    # a run without meta.json never finished an epoch: it has no rows to name
    for run_dir in sorted(p for p in (study / "runs").iterdir() if (p / "meta.json").exists()):
        name = _check_name(run_dir.name, study)
        meta = read_meta(run_dir)
        if (run_dir / MODEL_FILE).is_file():
            model_hash = file_hash(run_dir / MODEL_FILE)
        elif previous and name in previous["runs"]:
            model_hash = previous["runs"][name]["model_hash"]
        else:
            raise RobenchError(f"run {run_dir} has no {MODEL_FILE} and no entry in a {MANIFEST}: its rows cannot be named")
        runs[name] = {"model_hash": model_hash, "defense": meta.get("defense"), "seed": meta["config"].get("seed"),
                      "epochs_done": meta["epochs_done"], "finished": meta["finished"]}  # fmt: skip
    if not runs:
        raise RobenchError(f"{study} holds no runs")
    return runs


def study_grid(configs: list[dict], runs: dict[str, dict]) -> dict[str, list]:
    """The study's defenses (DEFENSES' order: any slicing gives one order) and seeds, united."""
    from .reproduce import DEFENSES

    if configs:
        defenses = {d for c in configs for d in c["defenses"]}
        seeds = {s for c in configs for s in c["seeds"]}
    else:  # no study settings: the runs' own names say <defense>-s<seed>
        defenses = {name.rsplit("-s", 1)[0] for name in runs}
        seeds = {int(name.rsplit("-s", 1)[1]) for name in runs if name.rsplit("-s", 1)[-1].isdigit()}
    order = list(DEFENSES)
    return {"defenses": sorted(defenses, key=lambda d: (order.index(d) if d in order else len(order), d)),
            "seeds": sorted(seeds)}  # fmt: skip


def _snapshot(db: Path, into: Path) -> None:
    """A consistent single-file copy of the results database (its WAL folded in), via SQLite's backup."""
    import sqlite3
    from urllib.parse import quote

    source = target = None
    try:
        source = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True)
        target = sqlite3.connect(into)
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise RobenchError(f"cannot read results database {db}: {exc}") from None
    finally:
        for connection in (source, target):
            if connection is not None:
                connection.close()


def _report_file(path: Path) -> bool:
    if not path.is_file() or path.suffix not in REPORT_SUFFIXES:
        return False
    return path.suffix != ".html" or path.stat().st_size <= MAX_HTML


def _tar(path: Path, members: list[tuple[str, Path]]) -> None:
    """Regular files only, under their fixed relative names, with no owner or permission baggage."""
    with tarfile.open(path, "w:gz") as tar:
        for arcname, source in members:
            info = tar.gettarinfo(str(source), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(source, "rb") as handle:
                tar.addfile(info, handle)


def read_bundle(path: str | os.PathLike, into_dir: str | os.PathLike) -> dict:
    """Extract a bundle into `into_dir` (new or empty) after checking every member; returns its manifest."""
    from gzip import BadGzipFile

    from .fileio import require_regular_file

    path, into = require_regular_file(path, "bundle"), Path(into_dir)
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise RobenchError(f"cannot extract {path} into {into}: it is not an empty folder")
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            _check_members(members, path)
            into.mkdir(parents=True, exist_ok=True)
            tar.extractall(into, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, BadGzipFile, EOFError, zlib.error) as exc:
        raise RobenchError(f"{path} is not a robench bundle (not a readable .tar.gz: {exc})") from None
    return load_manifest(into, where=path)


def _check_members(members: list[tarfile.TarInfo], path: Path) -> None:
    """Refuse links, devices, absolute names, `..` and anything outside the bundle layout."""
    total = 0
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or "\\" in member.name or ".." in parts or not parts:
            raise RobenchError(f"{path} is not a safe bundle: member {member.name!r} points outside it")
        if not (member.isfile() or member.isdir()):
            raise RobenchError(f"{path} is not a safe bundle: member {member.name!r} is a link or special file")
        if not _in_layout(parts, member.isdir()):
            raise RobenchError(f"{path} is not a robench bundle: unexpected member {member.name!r}")
        total += member.size
    if total > MAX_BYTES:
        raise RobenchError(f"{path} unpacks to {total:,} bytes, more than a bundle holds; refused")


def _in_layout(parts: tuple[str, ...], is_dir: bool) -> bool:
    if is_dir:
        return parts in (("runs",), ("report",)) or (len(parts) == 2 and parts[0] == "runs" and bool(SAFE_NAME.fullmatch(parts[1])))
    if len(parts) == 1:
        return parts[0] in (MANIFEST, "results.db", *TOP_FILES)
    if len(parts) == 2:
        return parts[0] == "report" and bool(SAFE_NAME.fullmatch(parts[1])) and parts[1].endswith(REPORT_SUFFIXES)
    return len(parts) == 3 and parts[0] == "runs" and bool(SAFE_NAME.fullmatch(parts[1])) and parts[2] in RUN_FILES


def load_manifest(directory: str | os.PathLike, *, where: Any = None) -> dict:
    """A bundle folder's bundle.json, checked: format, version, run names and hashes, files present."""
    directory = Path(directory)
    where = where or directory
    path = directory / MANIFEST
    try:
        if not path.is_file() or path.stat().st_size > MAX_MANIFEST:
            raise ValueError(f"no {MANIFEST}")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{MANIFEST} is not a {FORMAT} manifest")
        if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
            raise ValueError(f"format version {manifest.get('version')!r}; this robench reads up to {VERSION}")
        runs, configs = manifest.get("runs"), manifest.get("configs")
        if not isinstance(runs, dict) or not runs:
            raise ValueError("its runs are missing")
        if not (isinstance(configs, list) and all(isinstance(c, dict) and _list_of(c.get("defenses"), str)
                                                   and _list_of(c.get("seeds"), int) for c in configs)):  # fmt: skip
            raise ValueError("its configs are not study settings")
        if not (_list_of(manifest.get("defenses"), str) and _list_of(manifest.get("seeds"), int)):
            raise ValueError("its defenses or seeds are missing")
        for name, entry in runs.items():
            if not (SAFE_NAME.fullmatch(name) and isinstance(entry, dict) and HASH.fullmatch(str(entry.get("model_hash")))):
                raise ValueError(f"run {name!r} has no valid model_hash")
            if not (directory / "runs" / name / "meta.json").is_file():
                raise ValueError(f"run {name} has no meta.json")
        if not (directory / "results.db").is_file():
            raise ValueError("results.db is missing")
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RobenchError(f"{where} is not a robench bundle ({(str(exc).splitlines() or [repr(exc)])[0]})") from None
    return manifest


def _list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _check_name(name: str, where: Any) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise RobenchError(f"{where} has a run named {name!r}; run names are letters, digits and ._+=-")
    return name


def run_hashes(study_dir: str | os.PathLike) -> dict[str, str] | None:
    """Run name -> model hash from the study's bundle.json; None when it has none (then hash the weights)."""
    study = Path(study_dir)
    if not (study / MANIFEST).is_file():
        return None
    return {name: entry["model_hash"] for name, entry in load_manifest(study)["runs"].items()}


def merge_bundles(paths: list[str | os.PathLike], out_dir: str | os.PathLike, *, fmt: str = "md") -> Path:
    """Unite bundles into one study directory: see `robench.slices.merge_bundles`, where merging lives."""
    from .slices import merge_bundles as merge

    return merge(paths, out_dir, fmt=fmt)
