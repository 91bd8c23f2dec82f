"""Train a group of models side by side on one device: `robench train-many`, and `reproduce mnist`.

A small model on a big GPU is bound by kernel launches: LeNet' at batch 100 keeps an H200 mostly
idle, so the paper's 40 runs (8 recipes x 5 seeds x 150,000 steps) trained one after another take
hours. Runs of one architecture and batch schedule instead train as one `StackedNet` (grouped
convolutions, batched matmuls; see robench/stacked.py for why not torch.func.vmap): one step of the
group costs about the launches of one model's step.

Each member is still its own run, drawing exactly what `robench train` draws for it alone:
- its Xavier initialization from torch.manual_seed(seed), its batch order from (seed, epoch);
- its JR projections and dropout masks from its own (seed, epoch) generators (`train.epoch_generators`,
  training recipe 2), drawn in the order a single run draws them; a member without JR or dropout
  draws nothing, so its streams are those of its single run;
- its own weight decay, dropout rate, JR weight and FGSM epsilon, as per-member numbers: a member
  without a defense gets a zero weight on that term, which adds exactly nothing to its gradient;
- FGSM examples made in eval mode, as `train.fgsm_examples`;
- its own SGD momentum buffer, with torch.optim.SGD's update.
So the weights equal those of the same run trained alone, up to float rounding (grouped vs plain
convolution kernels): tests/test_side_by_side.py states the tolerance. Each member writes its own
ordinary run directory (log.csv, meta.json, weights, optimizer state), resumable by either command.

Not side by side (trained one after another by `train.train`): PGD-AT, TRADES, IGR, exact JR,
torch.compile, and models with BatchNorm (resnet18). A member that diverges stops with the usual
one-line message and leaves the group; the others go on.

This module is the entry point (`train_many`); the parts live beside it: `side_by_side_groups` (which
runs may share a group, and the groups), `side_by_side_trainer` (one group's loop: set-up, epochs,
deadline, divergence, per-member evaluation and checkpoints) and `side_by_side_step` (the stacked
SGD step and its per-member numbers). Every public name is importable from here.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

from . import rundir
from .errors import RobenchError
from .settings import TrainConfig
from .side_by_side_groups import SHARED, Job, plan_groups, program, why_alone
from .side_by_side_trainer import GroupTrainer

__all__ = ["SHARED", "GroupTrainer", "Job", "plan_groups", "program", "train_many", "why_alone"]


def train_many(
    runs: list[tuple[TrainConfig, str | Path]],
    *,
    show_progress: bool = True,
    split_programs: bool = True,
    group_size: int | None = None,
    save_every: float = 0.0,
    deadline: float | None = None,
    on_group_done: Callable[[list[Job], float], None] | None = None,
    stack: bool | None = None,
) -> list[Job]:
    """Train every run, side by side where possible; returns the jobs with their results.

    Finished runs are skipped; unfinished ones resume (runs are always resumed, as `reproduce`
    does). A run that fails (bad directory, divergence) has a RobenchError as its result; the
    others are trained regardless.

    Args:
        runs: (settings, run directory) pairs, in priority order.
        split_programs: group JR, FGSM-trained and plain runs apart (fastest); False puts every
            compatible run in one group (used by the equality test).
        group_size: at most this many members per group (None: no limit).
        save_every: seconds between checkpoints (0: every epoch). Log rows are kept for every epoch
            and written with the next checkpoint; an interrupted run resumes from its last one.
        deadline: time.monotonic() by which training must stop: when the projected finish of a
            group passes it, its last members are shed (saved where they are, resumable) so that
            the first ones finish; a group that cannot finish stops at an epoch boundary.
        on_group_done: called with (jobs, wall seconds) after each group.
        stack: train side by side (True), one after another (False), or side by side on CUDA only
            (None): on a CPU the stacked step is slower than one model at a time (grouped
            convolutions in oneDNN; docs/PERFORMANCE.md), so `reproduce --quick` there trains alone.
    """
    from .locking import exclusive
    from .train import train

    jobs = [Job(config.validate(), Path(out)) for config, out in runs]
    if stack is None:
        from .devices import resolve_device

        stack = resolve_device(jobs[0].config.device).type == "cuda" if jobs else False
    alone = [job for job in jobs if not stack or why_alone(job.config) is not None]
    for job in alone:  # train.train locks and prepares its own directory
        started = time.perf_counter()
        try:
            job.result = train(job.config, job.out_dir, resume=True, show_progress=show_progress)
        except RobenchError as exc:
            job.result = exc
        if on_group_done is not None:
            on_group_done([job], time.perf_counter() - started)
    with contextlib.ExitStack() as locks:
        todo = []
        for job in jobs:
            if job in alone:
                continue
            try:
                locks.enter_context(exclusive(job.out_dir))
                job.start, job.state, job.replacing = rundir.prepare_run_dir(job.config, job.out_dir, resume=True,
                                                                             force=False)  # fmt: skip
            except RobenchError as exc:
                job.result = exc
                continue
            if job.start >= job.config.epochs:
                job.result = job.state["meta"]
            else:
                todo.append(job)
        for group in plan_groups(todo, split_programs=split_programs, group_size=group_size):
            started = time.perf_counter()
            GroupTrainer(group, show_progress=show_progress, save_every=save_every, deadline=deadline).run()
            if on_group_done is not None:
                on_group_done(group, time.perf_counter() - started)
    return jobs
