"""The cascade of a suite (AutoAttack's protocol; see `robench.attacks.suites`): each member on the survivors of
the earlier ones, the run's ε grid in increasing order, breaks carried upward. Per-example members get the
survivors alone, FAB-T runs each target once for the whole grid (`robench.attacks.fab_reuse`), minimization
members once on the chunks holding survivors, and the others every fixed chunk holding one, so the outcomes
equal running every member on every example and taking the AND (tests/test_autoattack.py)."""

from __future__ import annotations

import time
from typing import Any

import torch

from .attacks import CHUNK, AttackSpec
from .attacks.fab_reuse import FabTargets
from .attacks.failure_rows import as_json as failure_json, merge as merge_failures, per_row
from .attacks.suites import Suite
from .evaluate_keys import grid as _grid


def _batches(spec: AttackSpec, shard: tuple[int, int], batch_size: int):
    """(start, stop) of the attack calls in a shard: --batch-size for per-example attacks, else the
    fixed CHUNKs of the image index (shards start on chunk boundaries)."""
    lo, hi = shard
    step = batch_size if spec.per_example else CHUNK
    return [(start, min(start + step, hi)) for start in range(lo, hi, step)]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_suite(suite: Suite, step: Any, todo: list[float], spec_base: dict) -> None:
    """The cascade (see `robench.attacks.suites`): each member on the survivors of the earlier ones,
    the run's ε grid in increasing order; at every ε to do, one row per member (robust so far) and the
    suite's row, written by rank 0. An ε of the grid already in the store (its key names the same carried
    grid) gives its survivors to the next one; the grid is the one asked for, never the store's."""
    lo, hi = step.shard
    alive = torch.cat([torch.zeros(0, dtype=torch.bool)] + [
        step.fixed(suite.members[0], torch.arange(a, b), 0.0).robust >= 1 for a, b in _batches_of(lo, hi, step.config.batch_size)])
    distances: dict[str, torch.Tensor] = {}
    grid = _grid(suite, step.config, spec_base["dataset"])
    for eps in (e for e in grid if e <= max(todo)):
        if eps not in todo:  # done earlier: its survivors, from the store
            key = {**spec_base, "spec_hash": suite.row_hash(eps, grid), "epsilon": eps}
            stored = step.world.on_main(lambda: step.store.robust_vector(key))
            if stored is not None:
                alive &= torch.as_tensor(stored[lo:hi] >= 1)
                continue  # else (a row without outcomes) it runs again: the carry needs its breaks
        step.progress.update(step.task, status=f"eps={eps:g}")
        after, failures = [], []
        for member in suite.members:
            found: list[dict] = []
            if eps > 0 and alive.any():
                alive &= ~_member_broken(member, step, eps, alive, distances, found)
            after.append(alive.double())
            failures.append(merge_failures(found))
        step.progress.update(step.task, advance=hi - lo)
        step.world.collect((after, failures), lambda parts: step.store.add(_suite_rows(suite, parts, eps, grid, spec_base)))


def _member_broken(member: AttackSpec, step: Any, eps: float, alive: torch.Tensor, distances: dict,
                   failures: list[dict]) -> torch.Tensor:  # fmt: skip
    """Which of the shard's examples `member` breaks at ε, attacking only where it must: survivors
    alone for per-example attacks, whole fixed chunks holding a survivor for the others. The member's
    indicators of attack failure are appended to `failures`."""
    lo, hi = step.shard
    broken = torch.zeros(hi - lo, dtype=torch.bool)
    if member.kind == "minimization":  # one run gives every ε: computed once, on chunks with survivors
        d = distances.setdefault(member.name, torch.full((hi - lo,), float("nan"), dtype=torch.float64))
        for a, b in _batches(member, step.shard, CHUNK):
            if alive[a - lo : b - lo].any() and torch.isnan(d[a - lo : b - lo]).any():
                d[a - lo : b - lo] = step.distances(member, a, b)
        return alive & (d <= eps)
    if member.eps_free:  # FAB-T: each target's run decides every ε (`robench.attacks.fab_reuse`)
        cache = distances.setdefault(member.name, FabTargets(len(step.y)))
        where = alive.nonzero().flatten() + lo
        for k in range(0, len(where), step.config.batch_size):
            idx = where[k : k + step.config.batch_size]
            broken[idx - lo] = cache.broken(member, step.fmodel, step.x, step.y, idx, eps, seed=step.config.seed,
                                            surrogate=step.surrogate)  # fmt: skip
        return broken
    if member.per_example:
        where = alive.nonzero().flatten() + lo
        for k in range(0, len(where), step.config.batch_size):
            idx = where[k : k + step.config.batch_size]
            outcome = step.fixed(member, idx, eps)
            broken[idx - lo] = outcome.robust < 1
            failures.append(outcome.failure)
        return broken
    for a, b in _batches(member, step.shard, CHUNK):
        if alive[a - lo : b - lo].any():
            outcome = step.fixed(member, torch.arange(a, b), eps)
            broken[a - lo : b - lo] = outcome.robust < 1
            failures.append(outcome.failure)
    return broken & alive


def _suite_rows(suite: Suite, parts: list, eps: float, grid: list[float], spec_base: dict) -> list[dict]:
    """Rows of one ε: after each member (`<suite>.<member>`, with that member's indicators of attack
    failure) and the suite's own (after all of them), all under the key that names the carried grid
    (`Suite.row_hash`); member rows say what they count."""
    per_member = [torch.cat([p[0][k] for p in parts]).numpy() for k in range(len(suite.members))]
    failures = [merge_failures([p[1][k] for p in parts]) for k in range(len(suite.members))]
    base = {**spec_base, "epsilon": eps, "spec_hash": suite.row_hash(eps, grid)}
    rows = []
    for member, robust, failure in zip(suite.members, per_member, failures):
        rows.append({**base, "attack": suite.member_row_name(member), "attack_params": suite.member_params(member, eps, grid),
                     "accuracy": float(robust.mean()), "timestamp": _now(), "_robust": robust,
                     "attack_failure": failure_json(per_row(failure, len(robust)))})  # fmt: skip
    rows.append({**base, "attack_params": suite.row_params(eps, grid), "accuracy": float(per_member[-1].mean()),
                 "timestamp": _now(), "_robust": per_member[-1]})  # fmt: skip
    return rows


def _batches_of(lo: int, hi: int, size: int):
    return [(a, min(a + size, hi)) for a in range(lo, hi, size)]
