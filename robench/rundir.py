"""A training run's directory: checked or cleared before training, one checkpoint per epoch after.

Layout (see checkpoint.py for each file): model.safetensors, optimizer.pt, log.csv, meta.json. Every
file is written atomically and meta.json last, so meta never claims an epoch that is not on disk
and a killed run resumes after its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, checkpoint
from .errors import RobenchError
from .fileio import ensure_writable_dir, write_atomic

# test_jacobian_norm is the pixel-units mean (its meaning before units were named), kept for readers of
# older logs; jr_term is the penalty in the run's jr_units.
LOG_COLUMNS = [
    "epoch", "supervised_loss", "jr_term", "train_accuracy", "test_accuracy", "test_jacobian_norm", "lr",
    "seconds", "jr_units", "test_jacobian_norm_pixel", "test_jacobian_norm_normalized",
]  # fmt: skip
# Settings that change where and how fast a run computes, not what it learns: a resumed run may differ in them.
RUNTIME_OPTIONS = ("device", "data_root", "compile", "tf32")


def prepare_run_dir(config, out_dir: Path, *, resume: bool, force: bool):
    """Check `out_dir` before any training; return (first epoch to run, saved state or None, replacing).

    Nothing is deleted here. With --force an existing run stays on disk (`replacing` is True) until
    the new run has its first epoch to save (`clear_run`), so a forced run that fails on bad input,
    diverges or is interrupted in its first epoch leaves the old run as it was. Files robench did not
    write (a log.csv or weights without a meta.json) are never overwritten or merged with, --force
    or not.
    """
    from .fileio import refuse_special

    if out_dir.exists() and not out_dir.is_dir():
        raise RobenchError(f"--out {out_dir} is not a directory")
    for name in checkpoint.RUN_FILES:
        refuse_special(out_dir / name)
    present = [name for name in checkpoint.RUN_FILES if os.path.lexists(out_dir / name)]
    if present and checkpoint.META_FILE not in present:
        raise RobenchError(
            f"{out_dir} holds {', '.join(present)} but no {checkpoint.META_FILE}, so robench did not write it "
            "(or its run lost its meta.json); robench never overwrites such files: move them away or choose another --out"
        )  # fmt: skip
    ensure_writable_dir(out_dir, f"cannot write to {out_dir}")
    if not present:
        return 0, None, False
    if not (resume or force):
        raise RobenchError(f"{out_dir} already holds a run; pass --resume to continue it or --force to overwrite it")
    try:
        meta = checkpoint.read_meta(out_dir)
    except RobenchError as exc:
        if force:
            raise RobenchError(f"{exc}; --force replaces only a readable robench run: move this one's files "
                               "away to start over") from None  # fmt: skip
        raise
    if force:
        return 0, None, True
    saved = meta["config"]
    mine = dataclasses.asdict(config)
    # Without a penalty (JR or IGR) its units change nothing: a plain run resumes whichever units are asked for.
    ignored = RUNTIME_OPTIONS + (("jr_units",) if not (mine["jr"] or mine.get("igr") or saved.get("jr") or saved.get("igr")) else ())
    changed = [k for k in mine if k not in ignored and saved.get(k) != mine[k]]
    if changed:
        raise RobenchError(f"--resume with different settings ({', '.join(changed)}) than {out_dir}; use --force to start over")
    from .settings import TRAIN_RECIPE

    recipe = meta.get("recipe", 1)
    if recipe != TRAIN_RECIPE and meta["epochs_done"] < config.epochs:
        raise RobenchError(f"{out_dir} was trained with training recipe {recipe} (see robench.settings.TRAIN_RECIPE) "
                           f"and this robench trains recipe {TRAIN_RECIPE}, so it cannot continue it; use --force to start over")
    weights, epoch = checkpoint.read_weights(out_dir)
    # Weights are saved before meta.json, so a run killed in between has weights one epoch ahead.
    if not meta["epochs_done"] <= epoch <= meta["epochs_done"] + 1:
        raise RobenchError(f"checkpoint {out_dir} is inconsistent: {checkpoint.MODEL_FILE} holds epoch {epoch} "
                           f"but {checkpoint.META_FILE} says {meta['epochs_done']}; use --force to start over")  # fmt: skip
    log = checkpoint.read_log(out_dir)  # a foreign or damaged log.csv is refused, not merged with
    if len(log) < epoch:  # a run killed between weights and log by a robench that saved the log after the weights
        raise RobenchError(f"{out_dir}/{checkpoint.LOG_FILE} ends at epoch {len(log)} but {checkpoint.MODEL_FILE} "
                           f"holds epoch {epoch}, so the log lost a row; use --force to start over")  # fmt: skip
    opt = checkpoint.load_optimizer_state(out_dir, epoch)
    optimizer_state = opt["optimizer"] if opt is not None else None
    return epoch, {"weights": weights, "optimizer": optimizer_state, "meta": meta}, False


def clear_run(out_dir: Path) -> None:
    """Remove the run --force replaces, meta.json first: from then on the directory claims no epoch."""
    for name in (checkpoint.META_FILE, *[n for n in checkpoint.RUN_FILES if n != checkpoint.META_FILE], checkpoint.OPTIMIZER_PREV_FILE):
        (out_dir / name).unlink(missing_ok=True)


def save_epoch(out_dir, config, model, optimizer, meta, row, *, pending=()) -> None:
    """Log, optimizer, weights, then meta.json last: meta never claims an epoch not on disk.

    The log goes first because a resume continues from the weights' epoch (they may be one ahead of
    meta.json): a kill after the weights must find their epoch's row already in the log, or the next
    save would write epochs 1..k-1, k+1. A log row ahead of the weights is harmless: the epoch is
    trained again and its row replaced.

    `pending` are log rows of earlier epochs not yet written (side-by-side training saves the
    weights every so many seconds, not every epoch, but logs every epoch); they go in before `row`.
    """
    import pandas as pd

    epoch = row["epoch"]
    rows = [*pending, row]
    log_path = out_dir / checkpoint.LOG_FILE
    # The log of this run's earlier epochs (checked on resume); a first epoch starts a new one.
    first = rows[0]["epoch"]
    log = checkpoint.read_log(out_dir) if first > 1 and log_path.exists() else pd.DataFrame(columns=LOG_COLUMNS)
    log = pd.concat([log[log["epoch"] < first], pd.DataFrame(rows)], ignore_index=True)
    write_atomic(log_path, lambda p: log.to_csv(p, index=False))
    checkpoint.save_optimizer(out_dir, optimizer, epoch)
    checkpoint.save_weights(out_dir, model, epoch)
    meta["epochs_done"] = epoch
    meta["finished"] = epoch == config.epochs
    meta["train_seconds"] = float(log["seconds"].sum())
    meta["metrics"] = {k: row[k] for k in ("test_accuracy", "test_jacobian_norm", "test_jacobian_norm_pixel",
                                           "test_jacobian_norm_normalized", "train_accuracy", "supervised_loss")}
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    checkpoint.save_meta(out_dir, meta)
    (out_dir / checkpoint.OPTIMIZER_PREV_FILE).unlink(missing_ok=True)


def new_meta(config, model: nn.Module) -> dict[str, Any]:
    import torchvision

    from .settings import TRAIN_RECIPE

    return {
        "robench_version": __version__,
        "recipe": TRAIN_RECIPE,
        "config": dataclasses.asdict(config),
        "defense": config.defense,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "epochs_done": 0,
        "finished": False,
    }  # fmt: skip