"""Finding the models (or groups of seeds) `robench compare` names in results files, and comparing them.

Each side is one model (a run directory as evaluated, its name, or a weights-hash prefix), a
comma-separated list of them (the seeds of one defense: `runs/jr-s0,runs/jr-s1,runs/jr-s2`), or
`defense:LABEL`, every model whose `defense` column is LABEL (`defense:jr=0.01`). Two single models
get the per-image interval, about those two models; a group on either side gets the interval over
seeds and images (`seeds.defense_difference`), which needs at least 3 seeds per side to measure
seed-to-seed variation and says so when it has fewer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import RobenchError

DEFENSE_PREFIX = "defense:"


def _find_model(rows: pd.DataFrame, name: str) -> tuple[str, str]:
    """(model_hash, label) of the model called `name`: its path as evaluated, its run name, or a
    prefix of its weights hash. Ambiguity is an error, not a guess."""
    models = rows.drop_duplicates("model_hash")[["model", "model_hash", "defense"]]
    clean = name.rstrip("/")
    hits = models[(models["model"].str.rstrip("/") == clean)]
    if hits.empty:
        hits = models[models["model"].map(lambda m: Path(m.rstrip("/")).name == Path(clean).name)]
    if hits.empty and len(clean) >= 4:
        hits = models[models["model_hash"].str.startswith(clean)]
    if hits.empty:
        known = ", ".join(sorted(Path(m).name or m for m in models["model"])) or "none"
        raise RobenchError(f"no model {name!r} in the results (models: {known})")
    if hits["model_hash"].nunique() > 1:
        raise RobenchError(f"{name!r} names {hits['model_hash'].nunique()} models (different weights); "
                           f"give a weights hash prefix: {', '.join(hits['model_hash'])}")  # fmt: skip
    row = hits.iloc[-1]
    return row["model_hash"], row["defense"] if row["defense"] not in ("", "external") else Path(row["model"]).name


def find_side(rows: pd.DataFrame, name: str) -> tuple[list[str], str, dict[str, str]]:
    """(model hashes, label, {hash: name}) of one side of `compare` (module docstring)."""
    if name.startswith(DEFENSE_PREFIX):
        label = name[len(DEFENSE_PREFIX):]
        models = rows[rows["defense"] == label].drop_duplicates("model_hash")
        if models.empty:
            known = ", ".join(sorted(set(rows["defense"]))) or "none"
            raise RobenchError(f"no models with defense {label!r} in the results (defenses: {known})")
        hashes = list(models["model_hash"])
        return hashes, label, {h: Path(m.rstrip("/")).name or h[:8] for h, m in zip(hashes, models["model"])}
    found = [_find_model(rows, part) for part in name.split(",") if part.strip()]
    if not found:
        raise RobenchError(f"{name!r} names no model")
    hashes = list(dict.fromkeys(h for h, _ in found))
    defenses = sorted({rows.loc[rows["model_hash"] == h, "defense"].iloc[0] for h in hashes})
    if len(defenses) > 1:
        raise RobenchError(f"{name!r} mixes defenses ({', '.join(defenses)}); a group is the seeds of one defense")
    names = {h: Path(part.rstrip("/")).name or part for (h, _), part in zip(found, name.split(","))}
    return hashes, found[0][1], names


def compare_from_files(paths: list[str | os.PathLike], model_a: str, model_b: str, attack: str | None):
    """(comparisons, label A, label B, refusals) from results files; a one-line error naming what
    differs when nothing compares. Outcomes found in several of the files count once."""
    from . import outcomes, read_results
    from .compare import compare_groups, refusals, unique_outcomes
    from .select import current_rows
    from .store import store_paths

    frames, outs = [], []
    for path in paths:
        csv, db = store_paths(path)
        if not csv.is_file() and not db.is_file():
            raise RobenchError(f"results file {path} not found")
        frames.append(read_results(path))
        outs.append(outcomes(path))
    rows = current_rows(pd.concat(frames, ignore_index=True))
    hashes_a, label_a, names_a = find_side(rows, model_a)
    hashes_b, label_b, names_b = find_side(rows, model_b)
    if set(hashes_a) & set(hashes_b):
        raise RobenchError(f"{model_a!r} and {model_b!r} share a model (weights {sorted(set(hashes_a) & set(hashes_b))[0]})")
    if label_a == label_b:
        label_a, label_b = f"{label_a} ({model_a})", f"{label_b} ({model_b})"
    table = unique_outcomes(pd.concat([o for o in outs if len(o)], ignore_index=True)) if any(len(o) for o in outs) else outs[0]
    found = compare_groups(rows, table, hashes_a, hashes_b, attack=attack)
    refused = refusals(rows, hashes_a, hashes_b, {**names_a, **names_b}, attack)
    if not found:
        raise RobenchError(refused[0] if refused else
                           "the two sides share no evaluation with per-example outcomes (same attack, spec, n, "
                           "seed and protocol); evaluate both with the same --attack and --n")  # fmt: skip
    return found, label_a, label_b, refused
