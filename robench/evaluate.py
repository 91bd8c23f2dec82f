"""The evaluation protocol: every model x attack x epsilon on the first N test images, one CSV row each.

Fixed-epsilon attacks (noise, FGSM, PGD) run once per epsilon and write their row as soon as it is
done; minimization attacks (CW) run once and give every epsilon's row from the per-example minimal
distances. Rows already in the CSV are skipped, so an interrupted run resumes at the next row.
Under torchrun each process attacks its own whole batches of the test images and rank 0 writes
the rows a single process would write.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import __version__, distributed
from .attacks import (
    AttackSpec,
    accuracy_from_distances,
    fixed_eps_accuracy,
    foolbox_model,
    minimal_distances,
    resolve_attacks,
)
from .data import load_dataset, to_unit_float
from .devices import configure_tf32
from .errors import RobenchError
from .metrics import clean_accuracy, mean_jacobian_norm
from .progress import make_progress
from .results import JACOBIAN_ATTACK, append_rows, check_writable, done_keys, median_or_inf, read_results, row_key
from .sources import ModelSource, check_classes, from_run, from_weights


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
        data_root: dataset directory (CIFAR-10, or an ImageNet-style root holding val/).
        tf32: allow TF32 matmuls and convolutions on CUDA (robench's default; off for full fp32).
    """

    attacks: str = "all"
    eps: tuple[float, ...] | None = None
    n: int | None = None
    batch_size: int = 500
    device: str = "auto"
    seed: int = 0
    data_root: str | None = None
    tf32: bool = True

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


def open_sources(
    models: list[str] | tuple[str, ...], *, arch: str | None = None, weights: str | None = None,
    dataset: str = "mnist",
) -> list[ModelSource]:
    """The models `robench eval` names: run directories, plus an --arch model with its --weights file."""
    if (arch is None) != (weights is None):
        raise RobenchError("--arch and --weights go together")
    if not models and arch is None:
        raise RobenchError("name at least one model (a robench run directory) or --arch with --weights")
    sources = [from_run(m) for m in models]
    if arch is not None:
        sources.append(from_weights(arch, weights, dataset))
    return sources


def evaluate(
    sources: list[ModelSource] | Callable[[], list[ModelSource]],
    config: EvalConfig,
    *,
    out: str | Path | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Evaluate every model against every attack; returns the rows of these models (old and new).

    Everything that can be checked is checked before the first attack runs: attack names, epsilon
    grids, output paths. Each finished row is appended to the CSV at once (atomically).

    Under torchrun the first N test images are split into contiguous runs of whole batches, one per
    process; every batch keeps the seed it has in a single process (from its start index), and
    rank 0 gathers the per-example outcomes and writes the rows, so the CSV equals a single
    process's (timestamps aside). Each process needs at least one whole batch: more processes than
    batches (ceil(N / batch_size)) is an error, raised on every rank. Other ranks return an empty table.

    Args:
        sources: the models, or a function opening them (under torchrun it runs on every rank, and
            a model that fails to open on any rank stops all of them with the same message).
        config: what to evaluate and how.
        out: the results CSV (default: results/<dataset>.csv per model).
        show_progress: draw a progress bar (rank 0 only).
    """
    config.validate()
    configure_tf32(config.tf32)
    with distributed.session(config.device) as world:
        specs, plans = world.agree(lambda: _plan(sources, config, out, world))
        frames = []
        with make_progress(disable=not (show_progress and world.is_main)) as progress:
            for source, path, grids in plans:
                frames.append(_evaluate_model(source, specs, grids, config, path, world, progress))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _plan(sources, config: EvalConfig, out, world: distributed.World):
    """Attack specs and (source, CSV path, eps grids) per model; rank 0 alone probes the paths."""
    specs = resolve_attacks(config.attacks)
    plans = []
    for source in sources() if callable(sources) else sources:
        path = Path(out or default_out(source.dataset))
        check_classes(source, root=config.data_root)
        if world.is_main:
            check_writable(path)
        grids = {spec.name: _grid(spec, config, source.dataset) for spec in specs}
        plans.append((source, path, grids))
    return specs, plans


def _grid(spec: AttackSpec, config: EvalConfig, dataset: str) -> list[float]:
    return sorted(set(config.eps)) if config.eps is not None else list(spec.default_eps(dataset))


def _evaluate_model(source, specs, grids, config, path, world, progress) -> pd.DataFrame:
    """All rows of one model: the clean/||J|| row on rank 0, then every attack on every rank's shard."""
    x, y, shard = world.agree(lambda: _load_test_set(source, config, world))
    model = source.model.to(world.device).eval()
    base = {
        "model": source.name, "dataset": source.dataset, "defense": source.defense, "n": len(y),
        "seed": config.seed, "robench_version": __version__, "model_hash": source.model_hash,
    }  # fmt: skip
    spec_bases = {spec.name: {**base, "attack": spec.name, "norm": spec.norm, "spec_hash": spec.spec_hash,
                              "attack_params": spec.params_json} for spec in specs}  # fmt: skip
    jac = {**base, "attack": JACOBIAN_ATTACK, "norm": "l2", "epsilon": 0.0, "spec_hash": "exact",
           "attack_params": json.dumps({"mode": "exact"})}  # fmt: skip
    need_jac, todo = world.on_main(lambda: _todo(path, jac, spec_bases, grids))
    if need_jac:  # on rank 0 alone: the same value as a single process, to the last bit
        world.on_main(lambda: append_rows(path, [{**jac, "accuracy": clean_accuracy(model, x, y),
                                                  "value": mean_jacobian_norm(model, x), "timestamp": _now()}]))
    fmodel = foolbox_model(model, world.device)
    for spec in specs:
        if not todo[spec.name]:
            continue
        size = shard[1] - shard[0]
        task = progress.add_task(f"{Path(source.name).name}: {spec.name}", total=len(todo[spec.name]) * size,
                                 status="")  # fmt: skip
        run = _run_minimization if spec.kind == "minimization" else _run_fixed
        run(spec, fmodel, x, y, shard, todo[spec.name], spec_bases[spec.name], config, path, world, progress, task)
    if not world.is_main:
        return pd.DataFrame()
    table = read_results(path)
    return table[table["model_hash"].astype(str) == source.model_hash].reset_index(drop=True)


def _load_test_set(source, config: EvalConfig, world: distributed.World):
    """The first N test images on this rank's device, and this rank's [start, stop) share of them."""
    # Folder datasets decode in DataLoader workers (shared among the ranks of a machine) into pinned
    # memory; the uint8 tensor crosses to the GPU before conversion (4x fewer bytes).
    images, labels = load_dataset(source.dataset, "test", root=config.data_root, subset=config.n,
                                  pin_memory=world.device.type == "cuda",
                                  num_workers=max(1, min(8, (os.cpu_count() or 1) // world.size)))  # fmt: skip
    n, batches = len(labels), -(-len(labels) // config.batch_size)
    if batches < world.size:
        raise RobenchError(
            f"{world.size} processes but the first {n} test images make only {batches} batch(es) of "
            f"--batch-size {config.batch_size}; every process needs a whole batch: use at most "
            f"{batches} process(es) or a smaller --batch-size"
        )
    shard = distributed.batch_shard(n, config.batch_size, world.rank, world.size)
    return to_unit_float(images.to(world.device, non_blocking=True)), labels.to(world.device), shard


def _todo(path, jac, spec_bases, grids) -> tuple[bool, dict[str, list[float]]]:
    """What is not yet in the CSV: the ||J|| row? which epsilons of each attack? (read on rank 0)."""
    done = done_keys(read_results(path))
    todo = {name: [e for e in grids[name] if row_key({**spec_base, "epsilon": e}) not in done]
            for name, spec_base in spec_bases.items()}  # fmt: skip
    return row_key(jac) not in done, todo


def _batches(shard: tuple[int, int], batch_size: int):
    """(start, stop) of the batches in a shard; shards start on batch boundaries."""
    lo, hi = shard
    return [(start, min(start + batch_size, hi)) for start in range(lo, hi, batch_size)]


def _run_fixed(spec, fmodel, x, y, shard, todo, spec_base, config, path, world, progress, task) -> None:
    """One row per epsilon, written (by rank 0, from every rank's outcomes) as soon as it is finished."""
    for eps in todo:
        progress.update(task, status=f"eps={eps:g}")
        parts = []
        for start, stop in _batches(shard, config.batch_size):
            parts.append(fixed_eps_accuracy(spec, fmodel, x[start:stop], y[start:stop], eps,
                                            seed=_batch_seed(config.seed, start)).double())  # fmt: skip
            progress.update(task, advance=stop - start)
        world.collect(torch.cat(parts), lambda shards: append_rows(
            path, [{**spec_base, "epsilon": eps, "accuracy": torch.cat(shards).mean().item(), "timestamp": _now()}]
        ))  # fmt: skip


def _run_minimization(spec, fmodel, x, y, shard, todo, spec_base, config, path, world, progress, task) -> None:
    """One attack run gives every epsilon's row (and the median minimal distance)."""
    progress.update(task, status="all eps at once")
    parts = []
    for start, stop in _batches(shard, config.batch_size):
        parts.append(minimal_distances(spec, fmodel, x[start:stop], y[start:stop],
                                       seed=_batch_seed(config.seed, start)))  # fmt: skip
        progress.update(task, advance=(stop - start) * len(todo))
    world.collect(torch.cat(parts),
                  lambda shards: append_rows(path, _distance_rows(torch.cat(shards), todo, spec_base)))  # fmt: skip


def _distance_rows(distances: torch.Tensor, todo: list[float], spec_base: dict) -> list[dict]:
    median = median_or_inf(distances.tolist())
    return [
        {**spec_base, "epsilon": eps, "accuracy": accuracy_from_distances(distances, eps),
         "value": median, "timestamp": _now()}
        for eps in todo
    ]  # fmt: skip


def _batch_seed(seed: int, start: int) -> int:
    """A seed per batch, so random starts differ between batches but repeat between runs."""
    return seed * 1_000_003 + start


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
