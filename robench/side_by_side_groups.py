"""Which runs may train side by side, and the groups they form (for `side_by_side.train_many`).

A group is one `StackedNet`, so its members must share the architecture and the batch schedule
(SHARED) and start at the same epoch; the defenses and the seed may differ. Runs whose training
step the stacked step does not implement (PGD-AT, TRADES, IGR, exact JR, torch.compile, BatchNorm)
train alone, and `why_alone` says why. Grouping JR, FGSM-trained and plain runs apart (`program`)
keeps a plain model from paying for a JR member's double backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import TrainConfig

# Settings every member of a group must share (the rest, the defenses and the seed, may differ).
SHARED = ("model", "dataset", "epochs", "batch_size", "lr", "momentum", "schedule", "warmup_epochs",
          "train_subset", "test_subset", "norm_samples", "device", "data_root", "jr_units", "nproj", "tf32")  # fmt: skip


def why_alone(config: TrainConfig) -> str | None:
    """None when the run can train side by side; else why it trains alone (for the log)."""
    if config.adv_train in ("pgd", "trades"):
        return f"{config.adv_train} adversarial training"
    if config.igr > 0:
        return "input-gradient regularization"
    if config.exact:
        return "exact JR"
    if config.compile:
        return "--compile"
    from .models import build_model
    from .stacked import stackable

    return stackable(build_model(config.model, config.dataset, dropout=config.dropout))


def program(config: TrainConfig) -> tuple[bool, bool]:
    """(JR, FGSM training): the terms a group's step computes for every member."""
    return config.jr > 0, config.adv_train == "fgsm"


@dataclass
class Job:
    """One run: its settings, directory and (once prepared) state."""

    config: TrainConfig
    out_dir: Path
    start: int = 0
    state: dict | None = None
    replacing: bool = False
    result: Any = None  # meta dict when done, RobenchError when it failed, "shed" when dropped
    pending: list = field(default_factory=list)


def plan_groups(jobs: list[Job], *, split_programs: bool = True, group_size: int | None = None) -> list[list[Job]]:
    """Groups in first-seen order: same SHARED settings and start epoch (and, with split_programs,
    the same program, so a plain model does not pay for a JR member's double backward)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = (tuple(getattr(job.config, k) for k in SHARED), job.start, program(job.config) if split_programs else ())
        groups.setdefault(key, []).append(job)
    planned = []
    for members in groups.values():
        size = group_size or len(members)
        planned += [members[i : i + size] for i in range(0, len(members), size)]
    return planned

