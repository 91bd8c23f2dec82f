"""Finding the two models `robench compare` names in results files, and comparing them."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import RobenchError


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


def compare_from_files(paths: list[str | os.PathLike], model_a: str, model_b: str, attack: str | None):
    """(comparisons, label A, label B) from results files; one-line errors when nothing compares."""
    from . import outcomes, read_results
    from .compare import compare_models
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
    hash_a, label_a = _find_model(rows, model_a)
    hash_b, label_b = _find_model(rows, model_b)
    if hash_a == hash_b:
        raise RobenchError(f"{model_a!r} and {model_b!r} are the same model (weights {hash_a})")
    if label_a == label_b:
        label_a, label_b = f"{label_a} ({model_a})", f"{label_b} ({model_b})"
    table = pd.concat([o for o in outs if len(o)], ignore_index=True) if any(len(o) for o in outs) else outs[0]
    found = compare_models(rows, table, hash_a, hash_b, attack=attack)
    if not found:
        raise RobenchError("the two models share no evaluation with per-example outcomes (same attack, spec, "
                           "n and seed); evaluate both with the same --attack and --n")  # fmt: skip
    return found, label_a, label_b
