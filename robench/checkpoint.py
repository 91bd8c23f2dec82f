"""Run directories: weights in safetensors, everything needed to rebuild the model in meta.json.

A run directory holds
    model.safetensors   the weights (no pickle: loading it cannot run code)
    meta.json           model, dataset, every training flag, seed, versions, final metrics
    log.csv             one row per finished epoch
    optimizer.pt        optimizer state for --resume (tensors only, read with weights_only=True)
    optimizer.prev.pt   the previous epoch's, only while a save is under way (see save_optimizer)
Each file is written atomically; meta.json is written last, so it never claims more than is on disk.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import RobenchError
from .fileio import write_atomic, write_json_atomic
from .models import build_model
from .run_files import LOG_FILE, META_FILE, MODEL_FILE, OPTIMIZER_FILE  # noqa: F401 - the run's file names

# The previous epoch's optimizer state, kept only while a save is under way (`save_optimizer`).
OPTIMIZER_PREV_FILE = "optimizer.prev.pt"
RUN_FILES = (MODEL_FILE, META_FILE, LOG_FILE, OPTIMIZER_FILE)
# Training settings added after runs existed, with the value every run saved without them had then:
# before `jr_units`, the penalty was taken in pixel units; before `warmup_epochs`, there was none.
LEGACY_CONFIG = {"jr_units": "pixel", "warmup_epochs": 0.0, "adv_steps": 10, "adv_mix": None, "trades_beta": 6.0,
                 "igr": 0.0}  # fmt: skip
MAX_META_BYTES = 1 << 20  # robench's own meta.json is ~2 kB


def save_weights(run_dir: str | os.PathLike, model: nn.Module, epoch: int) -> None:
    """Write the model's weights atomically; the epoch goes into the file's own header."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(
        Path(run_dir) / MODEL_FILE,
        lambda tmp: save_file(state, str(tmp), metadata={"robench_epoch": str(epoch)}),
    )


def save_optimizer(run_dir: str | os.PathLike, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Write optimizer state (momentum buffers) for resuming; plain tensors and numbers only.

    The state it replaces moves to optimizer.prev.pt first: the weights are written after this, so a
    run killed in between has weights of epoch k-1 and needs epoch k-1's momentum to resume exactly.
    `rundir.save_epoch` removes the old state once meta.json is written.
    """
    run_dir = Path(run_dir)
    payload = {"epoch": epoch, "optimizer": optimizer.state_dict()}
    if (run_dir / OPTIMIZER_FILE).is_file():
        os.replace(run_dir / OPTIMIZER_FILE, run_dir / OPTIMIZER_PREV_FILE)
    write_atomic(run_dir / OPTIMIZER_FILE, lambda tmp: torch.save(payload, tmp))


def load_optimizer_state(run_dir: str | os.PathLike, epoch: int | None = None) -> dict[str, Any] | None:
    """Read optimizer.pt with weights_only=True (refuses arbitrary pickled objects); None if absent.

    With `epoch`, the state saved for that epoch: optimizer.pt, or optimizer.prev.pt when a kill left
    optimizer.pt one epoch ahead of the weights; None if neither holds it.
    """
    run_dir = Path(run_dir)
    if epoch is None:
        return _read_optimizer(run_dir / OPTIMIZER_FILE)
    for name in (OPTIMIZER_FILE, OPTIMIZER_PREV_FILE):
        payload = _read_optimizer(run_dir / name)
        if payload is not None and payload["epoch"] == epoch:
            return payload
    return None


def _read_optimizer(path: Path) -> dict[str, Any] | None:
    from .fileio import refuse_special
    from .schemas import check_optimizer

    if not os.path.lexists(path):
        return None
    refuse_special(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RobenchError(f"optimizer state {path} is unreadable ({type(exc).__name__})") from None
    return check_optimizer(payload, path)


def save_meta(run_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write meta.json atomically."""
    write_json_atomic(Path(run_dir) / META_FILE, meta)


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run directory's meta.json, field by field (`schemas.check_meta`)."""
    from .fileio import refuse_special
    from .schemas import check_meta

    run_dir = Path(run_dir)
    path = run_dir / META_FILE
    if not run_dir.is_dir():
        raise RobenchError(f"no checkpoint at {run_dir}: not a directory")
    refuse_special(path)
    if not path.is_file():
        raise RobenchError(f"no checkpoint at {run_dir}: {META_FILE} is missing")
    if path.stat().st_size > MAX_META_BYTES:
        raise RobenchError(f"checkpoint {run_dir} is corrupt: {META_FILE} is {path.stat().st_size:,} bytes")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RobenchError(f"checkpoint {run_dir} is corrupt: {META_FILE} is not valid JSON") from None
    meta = check_meta(meta, path)
    meta.setdefault("epochs_done", 0)
    meta.setdefault("finished", False)
    return _complete_legacy(meta)


def read_log(run_dir: str | os.PathLike):
    """A run's log.csv as a DataFrame, checked to be robench's (`schemas.check_log`)."""
    import pandas as pd

    from .fileio import refuse_special
    from .rundir import LOG_COLUMNS
    from .schemas import check_log

    path = Path(run_dir) / LOG_FILE
    refuse_special(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        raise RobenchError(f"{path} is not a readable training log; use --force to start over") from None
    check_log(df, path, LOG_COLUMNS)
    return df


def _complete_legacy(meta: dict[str, Any]) -> dict[str, Any]:
    """Fill in the settings an older run's meta.json lacks (LEGACY_CONFIG), so it keeps its meaning:
    a JR run from before `jr_units` is labelled as the pixel-units run it was."""
    config = meta["config"]
    if "jr_units" not in config and isinstance(meta.get("defense"), str) and (config.get("jr") or 0) > 0:
        meta["defense"] = re.sub(r"(jr=[0-9.]+(?:e[+-]?[0-9]+)?)(?![0-9.e])", r"\1(pixel)", meta["defense"])
    for key, value in LEGACY_CONFIG.items():
        config.setdefault(key, value)
    return meta


def read_weights(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int]:
    """Read a run's model.safetensors; returns (state dict, epoch stored in its header)."""
    from .fileio import refuse_special

    path = Path(run_dir) / MODEL_FILE
    refuse_special(path)
    if not path.is_file():
        raise RobenchError(f"no checkpoint at {run_dir}: {MODEL_FILE} is missing")
    state, header = read_weights_file(path)
    return state, int(header.get("robench_epoch", "-1"))  # -1: weights saved by hand (resume refuses them)


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read any safetensors file; returns (state dict, header metadata), checked (`schemas.check_weights`)."""
    from safetensors import safe_open

    from .fileio import require_regular_file
    from .schemas import check_weights

    require_regular_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            header = handle.metadata() or {}
    except Exception as exc:
        raise RobenchError(f"checkpoint {path} is corrupt ({type(exc).__name__})") from None
    check_weights(state, header, Path(path))
    return state, header


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from its run directory alone.

    Args:
        run_dir: a directory written by `robench train`.
        device: where to put the model.

    Returns:
        (model in eval mode, meta dict).
    """
    meta = read_meta(run_dir)
    config = meta["config"]
    model = build_model(config["model"], config["dataset"], dropout=config.get("dropout", 0.0))
    state, _ = read_weights(run_dir)
    load_state(model, state, source=str(run_dir))
    return model.to(device).eval(), meta


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a state dict strictly, turning a mismatch into a one-line architecture error; weights
    with inf or NaN are refused (a diverged model has no robustness to measure)."""
    from .schemas import check_finite_weights

    check_finite_weights(state, source)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0].rstrip(":. ")
        missing = [k for k in model.state_dict() if k not in state]
        detail = f"{len(missing)} missing keys, e.g. {missing[0]}" if missing else first
        raise RobenchError(f"weights in {source} do not fit the architecture ({detail})") from None
