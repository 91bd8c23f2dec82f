"""The evaluation protocol: every model x attack x epsilon on the first N test images, one row each.

Reads top to bottom as the protocol: load the first N test images -> clean predictions and the exact
||J||_F of every image (the `jacobian_norm` row, pixel units; `jacobian_norm_normalized`, the paper's units,
when the model normalizes its input itself) -> for each attack spec, the per-example outcomes
at every epsilon still missing -> one row per epsilon, committed to the results store with those
outcomes as soon as it is finished (the store adds the worst case over attacks, intervals and flags).
Fixed-epsilon attacks (noise, FGSM, PGD) run once per epsilon; minimization attacks (CW) run once
and give every epsilon's row from the per-example minimal distances.

What makes a number checkable and repeatable: random starts and noise are drawn per example from
(seed, example index), and attacks that couple the examples of one call (CW) run on fixed chunks of
the image index (`robench.attacks.CHUNK`), so neither --batch-size nor the number of torchrun
processes changes any outcome. Under torchrun the images are split into contiguous runs of whole
chunks (any N works; a process may get none) and rank 0 gathers the outcomes and writes.
"""

from __future__ import annotations

import contextlib
import os
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from . import __version__, distributed
from .attacks import CHUNK, PROTOCOL, AttackSpec, foolbox_model, minimal_distances
from .attacks.failure import as_json as failure_json, merge as merge_failures, per_row
from .attacks.runners import Outcome, fixed_eps_outcomes
from .attacks.suites import resolve
from .data import load_dataset, to_unit_float
from .devices import configure_tf32, full_fp32
from .errors import RobenchError
from .evaluate_cascade import _batches, _now, run_suite
from .evaluate_keys import EOT_DEFAULT, grid as _grid, randomness, row_key, variant  # noqa: F401 - EOT_DEFAULT: public here too
from .untrusted import for_console
from .jacobian import input_std, jacobian_norm
from .model_probes import as_json, probe_model
from .progress import make_progress
from .results import JACOBIAN_ATTACK, JACOBIAN_NORMALIZED, ResultsStore, check_writable, median_or_inf
from .settings import EvalConfig  # noqa: F401 - public here too
from .sources import ModelSource, check_classes, from_run, from_weights


def default_out(dataset: str) -> Path:
    """results/<dataset>.csv, the CSV a model's rows go to when --out is not given."""
    return Path("results") / f"{dataset}.csv"


def open_sources(
    models: list[str] | tuple[str, ...], *, arch: str | None = None, weights: str | None = None,
    dataset: str = "mnist", normalize: str | None = "dataset", num_classes: int | None = None,
) -> list[ModelSource]:
    """The models `robench eval` names: run directories, plus an --arch model with its --weights file."""
    if (arch is None) != (weights is None):
        raise RobenchError("--arch and --weights go together")
    if not models and arch is None:
        raise RobenchError("name at least one model (a robench run directory) or --arch with --weights")
    sources = [from_run(m) for m in models]
    if arch is not None:
        sources.append(from_weights(arch, weights, dataset, normalize=normalize, num_classes=num_classes))
    return sources


def evaluate(
    sources: list[ModelSource] | Callable[[], list[ModelSource]],
    config: EvalConfig,
    *,
    out: str | Path | None = None,
    show_progress: bool = True,
    surrogate: ModelSource | None = None,
) -> pd.DataFrame:
    """Evaluate every model against every attack; returns the rows of these models (old and new).

    Everything that can be checked is checked before the first attack runs: attack names, epsilon
    grids, output paths. Each finished row is committed to the results store at once, with its
    per-example outcomes; the CSV beside it is rewritten from the store.

    Args:
        sources: the models, or a function opening them (under torchrun it runs on every rank, and
            a model that fails to open on any rank stops all of them with the same message).
        config: what to evaluate and how.
        out: the results CSV (default: results/<dataset>.csv per model); its database is beside it.
        show_progress: draw a progress bar (rank 0 only).
        surrogate: the model whose gradients the gradient attacks follow (default: `config.surrogate`
            opened, if given); a transfer attack, re-checked on each evaluated model.
    """
    config.validate()
    configure_tf32(config.tf32)
    with distributed.session(config.device) as world:
        specs, plans, surrogate = world.agree(lambda: _plan(sources, config, out, world, surrogate))
        frames = []
        with make_progress(disable=not (show_progress and world.is_main)) as progress, \
                contextlib.ExitStack() as stack:  # fmt: skip
            stores: dict[Path, ResultsStore] = {}
            for source, path, grids in plans:
                if world.is_main and path not in stores:
                    stores[path] = stack.enter_context(ResultsStore(path))
                frames.append(_evaluate_model(source, specs, grids, config, stores.get(path), world, progress, surrogate))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _plan(sources, config: EvalConfig, out, world: distributed.World, surrogate: ModelSource | None):
    """Attack specs, (source, CSV path, eps grids) per model, and the surrogate; rank 0 alone probes the paths."""
    specs = resolve(config.attacks)
    plans = []
    for source in sources() if callable(sources) else sources:
        path = Path(out or default_out(source.dataset))
        check_classes(source, root=config.data_root)
        if surrogate is None and config.surrogate:
            surrogate = open_surrogate(config.surrogate, source.dataset)
        if surrogate is not None and surrogate.dataset != source.dataset:
            raise RobenchError(f"--surrogate is a {surrogate.dataset} model; {source.name} is a {source.dataset} model")
        if world.is_main:
            check_writable(path)
        grids = {spec.name: _grid(spec, config, source.dataset) for spec in specs}
        plans.append((source, path, grids))
    return specs, plans, surrogate


def open_surrogate(text: str, dataset: str) -> ModelSource:
    """`--surrogate`: a robench run directory, or ARCH:WEIGHTS (an architecture robench knows and a
    safetensors or state-dict file) for `dataset`."""
    if Path(text).is_dir():
        return from_run(text)
    arch, sep, weights = text.partition(":")
    if not sep or not arch or not weights:
        raise RobenchError(f"--surrogate {text!r} is neither a run directory nor ARCH:WEIGHTS")
    return from_weights(arch, weights, dataset)


@dataclass(frozen=True)
class Step:
    """What evaluating one attack spec on one model may touch: the model (and the surrogate whose
    gradients gradient attacks follow), the images and this rank's shard of them, the run's settings,
    where finished rows go, and the progress bar."""

    fmodel: Any
    x: torch.Tensor
    y: torch.Tensor
    shard: tuple[int, int]
    config: EvalConfig
    store: Any
    world: distributed.World
    progress: Any
    task: Any
    surrogate: Any = None

    def fixed(self, spec: AttackSpec, idx: torch.Tensor, eps: float) -> Outcome:
        """The spec at ε on the test images `idx` (indices into the first N)."""
        where = idx.to(self.x.device)
        return fixed_eps_outcomes(spec, self.fmodel, self.x[where], self.y[where], eps, seed=self.config.seed,
                                  indices=idx, surrogate=self.surrogate)  # fmt: skip

    def distances(self, spec: AttackSpec, start: int, stop: int) -> torch.Tensor:
        return minimal_distances(spec, self.fmodel, self.x[start:stop], self.y[start:stop], seed=self.config.seed,
                                 indices=torch.arange(start, stop))  # fmt: skip


def _evaluate_model(source, specs, grids, config, store, world, progress, surrogate=None) -> pd.DataFrame:
    """All rows of one model: the clean/||J|| row on rank 0, then every attack on every rank's shard."""
    x, y, shard = world.agree(lambda: _load_test_set(source, config, world))
    model = source.model.to(world.device).eval()
    base = {
        "model": source.name, "dataset": source.dataset, "defense": source.defense, "n": len(y),
        "seed": config.seed, "robench_version": __version__, "model_hash": source.model_hash,
        "protocol": PROTOCOL,
    }  # fmt: skip
    # What AutoAttack checks before attacking (randomness, zero gradients, ...): measured once, kept on
    # every row this evaluation writes, read by robench.checks.
    base["model_checks"] = world.on_main(lambda: as_json(probe_model(model, x, y)))
    done = world.on_main(lambda: store.done(source.model_hash, len(y), config.seed, PROTOCOL))
    # The exact ||J|| rows: on all n images, on the first jacobian_n (rows of their own n), or none.
    jn = len(y) if config.jacobian_n is None else min(config.jacobian_n, len(y))
    wanted = [JACOBIAN_ATTACK] + ([JACOBIAN_NORMALIZED] if input_std(model) is not None else []) if jn else []
    done_j = done if jn == len(y) else world.on_main(lambda: store.done(source.model_hash, jn, config.seed, PROTOCOL))
    missing = [a for a in wanted if (a, "exact", 0.0) not in done_j]
    if missing:  # on rank 0 alone: the same values as a single process
        world.on_main(lambda: store.add(_clean_rows(model, x[:jn], y[:jn], {**base, "n": jn}, missing)))
    fmodel = foolbox_model(model, world.device)
    eot, votes = randomness(config.eot, base["model_checks"])
    surrogate_fmodel = None if surrogate is None else foolbox_model(surrogate.model.to(world.device).eval(), world.device)
    for spec in specs:
        grid = grids[spec.name]
        spec = variant(spec, config, eot, votes, surrogate.model_hash if surrogate is not None else "")
        todo = [e for e in grid if row_key(spec, e, grid) not in done]
        if not todo:
            continue
        spec_base = {**base, "attack": spec.name, "norm": spec.norm, "spec_hash": spec.spec_hash,
                     "attack_params": spec.params_json}  # fmt: skip
        size = shard[1] - shard[0]
        task = progress.add_task(for_console(f"{Path(source.name).name}: {spec.name}"), total=max(1, len(todo) * size), status="")
        step = Step(fmodel, x, y, shard, config, store, world, progress, task, surrogate_fmodel)
        {"minimization": _run_minimization, "fixed": _run_fixed, "suite": run_suite,
         "certified": _run_certified}[spec.kind](spec, step, todo, spec_base)  # fmt: skip
    return store.table([source.model_hash]) if world.is_main else pd.DataFrame()


@full_fp32()
def _clean_rows(model, x, y, base, attacks: list[str]) -> list[dict]:
    """The clean rows asked for, from one pass of clean predictions: clean correctness and each image's
    exact ||J||_F, in pixel units (`jacobian_norm`, with the grey-image share and how many distinct
    classes the model predicts: 1 is a degenerate model whose "robustness" is a class share) and in the
    paper's units (`jacobian_norm_normalized`: the pixel Jacobian with each channel scaled by the
    model's input std, which needs its Normalize layer). In full fp32 (TF32 off, `full_fp32`): exact
    rows whose values must not depend on the GPU."""
    with torch.no_grad():
        preds = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(y), 500)])
        grey = model(torch.full((1, *x.shape[1:]), 0.5, device=x.device)).argmax(1)
    correct = (preds == y).double().cpu().numpy()
    rows = []
    for attack in attacks:
        units = "normalized" if attack == JACOBIAN_NORMALIZED else "pixel"
        norms = jacobian_norm(model, x, units=units).detach().double().cpu().numpy()
        params = {"mode": "exact", "units": units}
        row = {**base, "attack": attack, "norm": "l2", "epsilon": 0.0, "spec_hash": "exact",
               "accuracy": float(correct.mean()), "value": float(norms.mean()), "timestamp": _now(),
               "_robust": correct, "_value": norms}  # fmt: skip
        if units == "normalized":
            params["input_std"] = [round(float(s), 6) for s in input_std(model).flatten()]
        else:
            row.update(grey_share=float((y == grey).double().mean()), distinct_predictions=int(preds.unique().numel()))
        rows.append({**row, "attack_params": json.dumps(params)})
    return rows


def _load_test_set(source, config: EvalConfig, world: distributed.World):
    """The first N test images on this rank's device, and this rank's [start, stop) share of them."""
    # Folder datasets decode in DataLoader workers (shared among the ranks of a machine) into pinned
    # memory; the uint8 tensor crosses to the GPU before conversion (4x fewer bytes).
    images, labels = load_dataset(source.dataset, "test", root=config.data_root, subset=config.n,
                                  pin_memory=world.device.type == "cuda",
                                  num_workers=max(1, min(8, (os.cpu_count() or 1) // world.size)))  # fmt: skip
    shard = distributed.chunk_shard(len(labels), CHUNK, world.rank, world.size)
    return to_unit_float(images.to(world.device, non_blocking=True)), labels.to(world.device), shard


def _run_fixed(spec: AttackSpec, step: Step, todo: list[float], spec_base: dict) -> None:
    """One row per epsilon, written (by rank 0, from every rank's outcomes) as soon as it is finished."""
    for eps in todo:
        step.progress.update(step.task, status=f"eps={eps:g}")
        parts, failures = [torch.zeros(0, dtype=torch.float64)], []
        for start, stop in _batches(spec, step.shard, step.config.batch_size):
            outcome = step.fixed(spec, torch.arange(start, stop), eps)
            parts.append(outcome.robust.double())
            failures.append(outcome.failure)
            step.progress.update(step.task, advance=stop - start)
        step.world.collect((torch.cat(parts), merge_failures(failures)), lambda shards: step.store.add(
            [_fixed_row(torch.cat([r for r, _ in shards]), eps, spec_base, [f for _, f in shards])]))


def _fixed_row(robust: torch.Tensor, eps: float, spec_base: dict, failures: list[dict] = ()) -> dict:
    robust = robust.numpy()
    return {**spec_base, "epsilon": eps, "accuracy": float(robust.mean()), "timestamp": _now(), "_robust": robust,
            "attack_failure": failure_json(per_row(merge_failures(list(failures)), len(robust)))}  # fmt: skip


def _run_certified(spec: AttackSpec, step: Step, todo: list[float], spec_base: dict) -> None:
    """A certification (`robench.attacks.certify_engine`): per ε, per example certified / unknown / broken.
    The row's accuracy counts the certified (a proven lower bound); the verdicts are its per-example values
    (1, 0, -1) and its value the share left unknown."""
    from .attacks.certify_engine import certified_outcomes, certified_radii
    from .attacks.foolbox_engine import _torch_module

    model = _torch_module(step.fmodel)
    if spec.class_name == "CertifiedRadius":  # one bisection per example gives every ε
        step.progress.update(step.task, status="all eps at once")
        parts = [torch.zeros(0, dtype=torch.float64)]
        for start, stop in _batches(spec, step.shard, step.config.batch_size):
            where = torch.arange(start, stop).to(step.x.device)
            parts.append(certified_radii(spec, model, step.x[where], step.y[where]))
            step.progress.update(step.task, advance=(stop - start) * len(todo))
        step.world.collect(torch.cat(parts), lambda shards: step.store.add(
            _distance_rows(torch.cat(shards), todo, spec_base, certified=True)))
        return
    for eps in todo:
        step.progress.update(step.task, status=f"eps={eps:g}")
        robust, codes = [torch.zeros(0)], [torch.zeros(0, dtype=torch.float64)]
        for start, stop in _batches(spec, step.shard, step.config.batch_size):
            where = torch.arange(start, stop).to(step.x.device)
            r, c = certified_outcomes(spec, model, step.x[where], step.y[where], eps)
            robust.append(r)
            codes.append(c)
            step.progress.update(step.task, advance=stop - start)

        def row(shards: list, eps: float = eps) -> list[dict]:
            r = torch.cat([s[0] for s in shards]).double().numpy()
            c = torch.cat([s[1] for s in shards]).numpy()
            return [{**spec_base, "epsilon": eps, "accuracy": float(r.mean()), "value": float((c == 0).mean()),
                     "timestamp": _now(), "_robust": r, "_value": c}]  # fmt: skip

        step.world.collect((torch.cat(robust), torch.cat(codes)), lambda shards: step.store.add(row(shards)))


def _run_minimization(spec: AttackSpec, step: Step, todo: list[float], spec_base: dict) -> None:
    """One attack run gives every epsilon's row (and the median minimal distance)."""
    step.progress.update(step.task, status="all eps at once")
    parts = [torch.zeros(0, dtype=torch.float64)]
    for start, stop in _batches(spec, step.shard, step.config.batch_size):
        parts.append(step.distances(spec, start, stop))
        step.progress.update(step.task, advance=(stop - start) * len(todo))
    step.world.collect(torch.cat(parts), lambda shards: step.store.add(_distance_rows(torch.cat(shards), todo, spec_base)))


def _distance_rows(distances: torch.Tensor, todo: list[float], spec_base: dict, certified: bool = False) -> list[dict]:
    """Rows at every ε from per-example distances: a minimal adversarial distance d (robust where d > ε), or
    a certified radius r (robust where r >= ε: certified at r is certified within every smaller ball; r = 0
    marks a misclassified clean input, robust nowhere)."""
    d = distances.numpy()
    median = median_or_inf(d.tolist())
    rows = []
    for eps in todo:
        robust = ((d >= eps) & (d > 0) if certified else d > eps).astype(np.float64)
        rows.append({**spec_base, "epsilon": eps, "accuracy": float(robust.mean()), "value": median,
                     "timestamp": _now(), "_robust": robust, "_distance": d})  # fmt: skip
    return rows
