"""A study run in slices, merged: bundles (robench/bundle.py) united into one study directory.

The merged study holds no weights: runs/<name>/{log.csv,meta.json}, the united results store, a
bundle.json whose runs and slice configs are the union of the inputs', then claims and the report
computed from the store alone, so they equal those of one study that ran every slice at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .bundle import FORMAT, MANIFEST, RUN_FILES, VERSION, library_versions, load_manifest, read_bundle, study_grid
from .errors import RobenchError


RECIPE = ("model", "epochs", "train_subset", "warmup_epochs", "adv_eps")  # slices of one study share these
EVALUATION = ("n", "attacks", "eps", "attack_n")  # these may differ; the store keeps each row's own n
PAPER_SEEDS = (0, 1, 2, 3, 4)


def merge_bundles(paths: list[str | os.PathLike], out_dir: str | os.PathLike, *, fmt: str = "md") -> Path:
    """Unite bundles (.tar.gz files or their extracted folders) into one study directory at `out_dir`.

    `out_dir` gets runs/<name>/{log.csv,meta.json}, the merged store (a row found in several bundles
    counts once), bundle.json (runs and slice configs united), then claims and the report, computed
    from the store alone. It must be new, empty, or an earlier merge (which is replaced, and may
    itself be one of the inputs). Two bundles holding one run name with different weights are refused.
    """
    from .claims import study_claims, write_claims
    from .fileio import write_json_atomic
    from .report import write_report
    from .results import merge

    if not paths:
        raise RobenchError("name at least one bundle to merge")
    out = Path(out_dir)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name[:64]}.merge-", dir=out.parent))
    try:
        sources = []
        for i, path in enumerate(map(Path, paths)):
            folder = path if path.is_dir() else work / f"in{i}"
            sources.append((path, folder, load_manifest(path) if path.is_dir() else read_bundle(path, folder)))
        manifest = _merged_manifest(sources)
        config = study_config(manifest)  # slices of different recipes are refused before anything is written
        stage = work / "study"
        for name in manifest["runs"]:
            folder = next(f for _, f, m in sources if name in m["runs"])
            (stage / "runs" / name).mkdir(parents=True)
            for file in RUN_FILES:
                if (folder / "runs" / name / file).is_file():
                    shutil.copyfile(folder / "runs" / name / file, stage / "runs" / name / file)
        merge([folder / "results.db" for _, folder, _ in sources], stage / "results.csv",
              models={e["model_hash"]: str(out / "runs" / n) for n, e in manifest["runs"].items()})  # fmt: skip
        write_json_atomic(stage / MANIFEST, manifest)
        if out.exists():
            os.replace(out, work / "replaced")
        os.replace(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report([out / "results.csv"], out / "report", fmt=fmt)
    context = _describe(config, manifest) + f" Merged from {len(manifest['sources'])} slice(s)."
    write_claims(study_claims(config, out, out / "results.csv"), out, context=context)
    return out


def _check_out(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise RobenchError(f"--out {out} is not a directory")
    if any(out.iterdir()) and not _is_merge(out):
        raise RobenchError(f"--out {out} holds files that are not a merged study; choose a new or empty folder")


def _is_merge(folder: Path) -> bool:
    try:
        return bool(load_manifest(folder).get("merged"))
    except RobenchError:
        return False


def _merged_manifest(sources: list[tuple[Path, Path, dict]]) -> dict:
    """Runs, slice configs and provenance of every source, united; one run name must mean one model."""
    runs: dict[str, dict] = {}
    owner: dict[str, Path] = {}
    configs: list[dict] = []
    slices: list[dict] = []
    for path, _, manifest in sources:
        for name, entry in manifest["runs"].items():
            if name in runs and runs[name]["model_hash"] != entry["model_hash"]:
                raise RobenchError(f"run {name} is one model in {owner[name]} (weights {runs[name]['model_hash']}) and "
                                   f"another in {path} (weights {entry['model_hash']}); merge only one of them")  # fmt: skip
            runs.setdefault(name, entry)
            owner.setdefault(name, path)
        configs += [c for c in manifest.get("configs", []) if c not in configs]
        mine = manifest.get("sources") if manifest.get("merged") else [
            {"bundle": path.name, **{k: manifest.get(k) for k in ("created", "extra", "versions")}}]
        slices += [s for s in mine or [] if s not in slices]
    merged = {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "merged": True,
              "runs": dict(sorted(runs.items())), "configs": configs, "extra": {}, "versions": library_versions(),
              "sources": slices}  # fmt: skip
    return {**merged, **study_grid(configs, runs)}


def study_config(manifest: dict):
    """The ReproduceConfig a (merged) study answers to: its slices' recipe, their defenses and seeds united.

    Without slice configs (bundles written without `config`) only defenses and seeds are known.
    """
    from dataclasses import fields

    from .reproduce import ReproduceConfig

    grid = {"defenses": tuple(manifest["defenses"]), "seeds": tuple(manifest["seeds"])}
    known = {f.name for f in fields(ReproduceConfig)}
    slices = [{k: v for k, v in c.items() if k in known} for c in manifest.get("configs") or []]
    if not slices:
        return ReproduceConfig(**grid)
    for key in RECIPE:
        values = sorted({json.dumps(s.get(key)) for s in slices})
        if len(values) > 1:
            raise RobenchError(f"the bundles were trained with different recipes ({key}: {', '.join(values)}); "
                               "a merged study compares like with like")  # fmt: skip
    first = {**slices[0], **grid}
    first["eps"] = {k: tuple(v) for k, v in (first.get("eps") or {}).items()}
    return ReproduceConfig(**first)


def _describe(config, manifest: dict) -> str:
    from .reproduce import describe

    if not manifest.get("configs"):
        return "Study settings unknown (the bundles carry no config)."
    differ = [k for k in EVALUATION if len({json.dumps(c.get(k), sort_keys=True) for c in manifest["configs"]}) > 1]
    return describe(config) + (f" The slices differ in {', '.join(differ)} (the first slice's are shown)." if differ else "")


def study_summary(study_dir: str | os.PathLike) -> dict[str, Any]:
    """What a merged study holds, and which runs of the paper's grid (nine defenses x seeds 0-4) it lacks."""
    from .reproduce import PAPER_DEFENSES, ReproduceConfig

    manifest = load_manifest(study_dir)
    grid = ReproduceConfig(defenses=PAPER_DEFENSES, seeds=PAPER_SEEDS)
    missing = {d: [s for s in PAPER_SEEDS if grid.run_name(d, s) not in manifest["runs"]] for d in PAPER_DEFENSES}
    return {"runs": sorted(manifest["runs"]), "defenses": manifest["defenses"], "seeds": manifest["seeds"],
            "unfinished": sorted(n for n, e in manifest["runs"].items() if not e.get("finished")),
            "missing": {d: seeds for d, seeds in missing.items() if seeds}}  # fmt: skip
