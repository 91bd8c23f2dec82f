"""Whether an `eval` has anything left to do, decided from the results store, the weights' hashes and the
specs' hashes alone: before any model, dataset or attack engine is loaded.

Why: rerunning a study (a Makefile, a resumed job, a notebook cell) re-issues every `robench eval`, and
each used to open its models, load the test set, import Foolbox and probe the model before it looked at
the store: seconds per call for nothing. Here the question is answered the way `robench.evaluate` answers
it (the same keys: model_hash, n, seed, protocol, attack, spec_hash, ε), from files and SQLite only.

It is an optimization and never a second source of truth: it answers "all done" only when every row the
evaluation would write is in the store under exactly the hash the evaluation would give it, and it hands
anything it cannot decide cheaply (an --arch model, a surrogate, torchrun, EOT, a dataset whose test-set
size it does not know, an unreadable file) back to the full evaluation, which gives the proper error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_META_BYTES = 1 << 20  # as robench.checkpoint reads meta.json (robench's own is ~2 kB)
TEST_SET_SIZE = {"mnist": 10_000, "cifar10": 10_000}  # fixed by the datasets; imagenet: a folder's own size


def finished_table(models: tuple[str, ...] | list[str], config: Any, out: str | Path | None) -> Any:
    """The rows of `models` (a DataFrame, as `evaluate` returns it) when the store already holds every row
    this evaluation would write; None when anything is left to do or cannot be decided cheaply."""
    if not models or config.surrogate or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    try:
        plans = [_plan(Path(m), config, out) for m in models]
    except Exception:  # noqa: BLE001 - anything unexpected: the full evaluation decides and explains
        return None
    if any(p is None for p in plans):
        return None
    return _read_rows(plans)


def _plan(run: Path, config: Any, out: str | Path | None) -> tuple[Path, str] | None:
    """(store path, model hash) when every row of this run dir's evaluation is in its store, else None."""
    from .evaluate_keys import expected_rows, randomness
    from .results import JACOBIAN_NORMALIZED
    from .results.store import store_paths
    from .run_files import META_FILE, MODEL_FILE, file_hash

    meta_file, weights = run / META_FILE, run / MODEL_FILE
    # only regular files of a sane size: a FIFO would block the read, and the full evaluation says why
    if not (meta_file.is_file() and weights.is_file()) or meta_file.stat().st_size > MAX_META_BYTES:
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    dataset = meta["config"]["dataset"]
    size = TEST_SET_SIZE.get(dataset)
    if size is None:
        return None
    n = size if config.n is None else min(int(config.n), size)
    path = Path(out) if out is not None else Path("results") / f"{dataset}.csv"
    if not store_paths(path)[1].is_file():
        return None
    model_hash = file_hash(weights)
    done, checks = _stored(path, model_hash, n, config.seed)
    if checks is None:
        return None
    eot, votes = randomness(config.eot, checks)
    if eot > 1:  # which specs average gradients needs the engines
        return None
    # a stored normalized ||J|| row answers for the model's normalization; else the model is opened to ask
    normalized = lambda: (JACOBIAN_NORMALIZED, "exact", 0.0) in done or _normalizes(run)  # noqa: E731
    wanted = expected_rows(config, dataset, n, votes, normalized)
    return (path, model_hash) if wanted is not None and wanted <= done else None


def _stored(path: Path, model_hash: str, n: int, seed: int) -> tuple[set, str | None]:
    """Keys (attack, spec_hash, ε key) of the evaluation's rows in the store, and its probed model checks."""
    from .attacks.specs import PROTOCOL
    from .results import ResultsStore

    with ResultsStore(path, readonly=True, relations={}) as store:
        done = store.done(model_hash, n, seed, PROTOCOL)
        checks = store.model_checks(model_hash, n, seed, PROTOCOL)
    return done, checks


def _normalizes(run: Path) -> bool:
    """Whether the run's model has its own input normalization (then it also has a normalized ||J|| row)."""
    from . import checkpoint
    from .jacobian import input_std

    model, _ = checkpoint.load(run)
    return input_std(model) is not None


def _read_rows(plans: list[tuple[Path, str]]) -> Any:
    import pandas as pd

    from .results import ResultsStore

    frames = []
    for path in dict.fromkeys(p for p, _ in plans):
        with ResultsStore(path, readonly=True) as store:
            frames.append(store.table([h for p, h in plans if p == path]))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
