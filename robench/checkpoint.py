"""Run directories: weights in safetensors, everything needed to rebuild the model in meta.json.

A run directory holds
    model.safetensors   the weights (no pickle: loading it cannot run code)
    meta.json           model, dataset, every training flag, seed, versions, final metrics
    log.csv             one row per finished epoch
    optimizer.pt        optimizer state for --resume (tensors only, read with weights_only=True)
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

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
LOG_FILE = "log.csv"
OPTIMIZER_FILE = "optimizer.pt"
RUN_FILES = (MODEL_FILE, META_FILE, LOG_FILE, OPTIMIZER_FILE)
# Training settings added after runs existed, with the value every run saved without them had then:
# before `jr_units`, the penalty was taken in pixel units; before `warmup_epochs`, there was none.
LEGACY_CONFIG = {"jr_units": "pixel", "warmup_epochs": 0.0}


def save_weights(run_dir: str | os.PathLike, model: nn.Module, epoch: int) -> None:
    """Write the model's weights atomically; the epoch goes into the file's own header."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(
        Path(run_dir) / MODEL_FILE,
        lambda tmp: save_file(state, str(tmp), metadata={"robench_epoch": str(epoch)}),
    )


def save_optimizer(run_dir: str | os.PathLike, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Write optimizer state (momentum buffers) for resuming; plain tensors and numbers only."""
    payload = {"epoch": epoch, "optimizer": optimizer.state_dict()}
    write_atomic(Path(run_dir) / OPTIMIZER_FILE, lambda tmp: torch.save(payload, tmp))


def load_optimizer_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Read optimizer.pt with weights_only=True (refuses arbitrary pickled objects); None if absent."""
    path = Path(run_dir) / OPTIMIZER_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RobenchError(f"optimizer state {path} is unreadable ({type(exc).__name__})") from None


def save_meta(run_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write meta.json atomically."""
    write_json_atomic(Path(run_dir) / META_FILE, meta)


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run directory's meta.json."""
    run_dir = Path(run_dir)
    path = run_dir / META_FILE
    if not run_dir.is_dir():
        raise RobenchError(f"no checkpoint at {run_dir}: not a directory")
    if not path.is_file():
        raise RobenchError(f"no checkpoint at {run_dir}: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RobenchError(f"checkpoint {run_dir} is corrupt: {META_FILE} is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise RobenchError(f"checkpoint {run_dir} is corrupt: {META_FILE} has no training config")
    return _complete_legacy(meta)


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
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RobenchError(f"no checkpoint at {run_dir}: {MODEL_FILE} is missing")
    state, header = read_weights_file(path)
    return state, int(header.get("robench_epoch", "-1"))


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read any safetensors file; returns (state dict, header metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            header = handle.metadata() or {}
    except Exception as exc:
        raise RobenchError(f"checkpoint {path} is corrupt ({type(exc).__name__})") from None
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
    """Load a state dict strictly, turning a mismatch into a one-line architecture error."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0].rstrip(":. ")
        missing = [k for k in model.state_dict() if k not in state]
        detail = f"{len(missing)} missing keys, e.g. {missing[0]}" if missing else first
        raise RobenchError(f"weights in {source} do not fit the architecture ({detail})") from None
