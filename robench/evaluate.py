"""The evaluation protocol: every model x attack x epsilon on the first N test images, one CSV row each.

Fixed-epsilon attacks (noise, FGSM, PGD) run once per epsilon and write their row as soon as it is
done; minimization attacks (CW) run once and give every epsilon's row from the per-example minimal
distances. Rows already in the CSV are skipped, so an interrupted run resumes at the next row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .attacks import (
    AttackSpec,
    accuracy_from_distances,
    fixed_eps_accuracy,
    foolbox_model,
    minimal_distances,
    resolve_attacks,
)
from .data import load_dataset, to_unit_float
from .devices import resolve_device
from .errors import RobenchError
from .metrics import clean_accuracy, mean_jacobian_norm
from .progress import make_progress
from .results import JACOBIAN_ATTACK, append_rows, check_writable, done_keys, median_or_inf, read_results, row_key
from .sources import ModelSource


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; defaults shown by `robench eval --help`.

    Args:
        attacks: comma-separated attack names, or "all".
        eps: epsilon grid overriding each attack's default grid for the dataset.
        n: evaluate the first n test images (None: the whole test set).
        batch_size: images per attack call.
        device: auto, cpu, cuda or cuda:N.
        seed: seeds random starts and noise draws.
        data_root: dataset directory (CIFAR-10).
    """

    attacks: str = "all"
    eps: tuple[float, ...] | None = None
    n: int | None = None
    batch_size: int = 500
    device: str = "auto"
    seed: int = 0
    data_root: str | None = None

    def validate(self) -> "EvalConfig":
        if self.n is not None and self.n < 1:
            raise RobenchError(f"--n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise RobenchError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.eps is not None and any(e < 0 for e in self.eps):
            raise RobenchError("epsilon must be >= 0")
        return self


def default_out(dataset: str) -> Path:
    """results/<dataset>.csv, the CSV a model's rows go to when --out is not given."""
    return Path("results") / f"{dataset}.csv"


def evaluate(
    sources: list[ModelSource], config: EvalConfig, *, out: str | Path | None = None, show_progress: bool = True
) -> pd.DataFrame:
    """Evaluate every model against every attack; returns the rows of these models (old and new).

    Everything that can be checked is checked before the first attack runs: attack names, epsilon
    grids, output paths. Each finished row is appended to the CSV at once (atomically).
    """
    config.validate()
    specs = resolve_attacks(config.attacks)
    device = resolve_device(config.device)
    plans = []
    for source in sources:
        path = check_writable(out or default_out(source.dataset))
        grids = {spec.name: _grid(spec, config, source.dataset) for spec in specs}
        plans.append((source, path, grids))
    frames = []
    with make_progress(disable=not show_progress) as progress:
        for source, path, grids in plans:
            frames.append(_evaluate_model(source, specs, grids, config, path, device, progress))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _grid(spec: AttackSpec, config: EvalConfig, dataset: str) -> list[float]:
    return sorted(set(config.eps)) if config.eps is not None else list(spec.default_eps(dataset))


def _evaluate_model(source, specs, grids, config, path, device, progress) -> pd.DataFrame:
    images, labels = load_dataset(source.dataset, "test", root=config.data_root, subset=config.n)
    model = source.model.to(device).eval()
    x, y = to_unit_float(images).to(device), labels.to(device)
    base = {
        "model": source.name, "dataset": source.dataset, "defense": source.defense, "n": len(y),
        "seed": config.seed, "robench_version": __version__, "model_hash": source.model_hash,
    }  # fmt: skip
    done = done_keys(read_results(path))
    jac = {**base, "attack": JACOBIAN_ATTACK, "norm": "l2", "epsilon": 0.0, "spec_hash": "exact",
           "attack_params": json.dumps({"mode": "exact"})}  # fmt: skip
    if row_key(jac) not in done:
        jac.update(accuracy=clean_accuracy(model, x, y), value=mean_jacobian_norm(model, x), timestamp=_now())
        append_rows(path, [jac])
    fmodel = foolbox_model(model, device)
    for spec in specs:
        spec_base = {**base, "attack": spec.name, "norm": spec.norm, "spec_hash": spec.spec_hash,
                     "attack_params": spec.params_json}  # fmt: skip
        todo = [e for e in grids[spec.name] if row_key({**spec_base, "epsilon": e}) not in done]
        if not todo:
            continue
        task = progress.add_task(f"{Path(source.name).name}: {spec.name}", total=len(todo) * len(y), status="")
        if spec.kind == "minimization":
            _run_minimization(spec, fmodel, x, y, todo, spec_base, config, path, progress, task)
        else:
            _run_fixed(spec, fmodel, x, y, todo, spec_base, config, path, progress, task)
    table = read_results(path)
    return table[table["model_hash"].astype(str) == source.model_hash].reset_index(drop=True)


def _run_fixed(spec, fmodel, x, y, todo, spec_base, config, path, progress, task) -> None:
    """One row per epsilon, written as soon as that epsilon is finished."""
    for eps in todo:
        progress.update(task, status=f"eps={eps:g}")
        correct = torch.zeros(len(y), dtype=torch.float64)
        for start in range(0, len(y), config.batch_size):
            stop = min(start + config.batch_size, len(y))
            correct[start:stop] = fixed_eps_accuracy(
                spec, fmodel, x[start:stop], y[start:stop], eps, seed=_batch_seed(config.seed, start)
            ).double()
            progress.update(task, advance=stop - start)
        append_rows(path, [{**spec_base, "epsilon": eps, "accuracy": correct.mean().item(), "timestamp": _now()}])


def _run_minimization(spec, fmodel, x, y, todo, spec_base, config, path, progress, task) -> None:
    """One attack run gives every epsilon's row (and the median minimal distance)."""
    progress.update(task, status="all eps at once")
    distances = []
    for start in range(0, len(y), config.batch_size):
        stop = min(start + config.batch_size, len(y))
        distances.append(minimal_distances(spec, fmodel, x[start:stop], y[start:stop],
                                           seed=_batch_seed(config.seed, start)))  # fmt: skip
        progress.update(task, advance=(stop - start) * len(todo))
    distances = torch.cat(distances)
    median = median_or_inf(distances.tolist())
    rows = [
        {**spec_base, "epsilon": eps, "accuracy": accuracy_from_distances(distances, eps),
         "value": median, "timestamp": _now()}
        for eps in todo
    ]  # fmt: skip
    append_rows(path, rows)


def _batch_seed(seed: int, start: int) -> int:
    """A seed per batch, so random starts differ between batches but repeat between runs."""
    return seed * 1_000_003 + start


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
