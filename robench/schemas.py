"""Field-by-field checks of the files in a run directory, against what robench writes into them.

A run directory may have been edited, truncated, or made by someone else. Each reader checks the
whole structure here before using any of it (not scattered `.get` calls that fail three functions
later), so a bad file gives one line naming the file and the field:
    meta.json       `META_FIELDS` and the training config's fields (TrainConfig's own types)
    optimizer.pt    {"epoch": int, "optimizer": torch.optim state dict}
    log.csv         robench's LOG_COLUMNS, epochs 1, 2, 3, ... in order
    safetensors     string keys to tensors; `robench_epoch` in the header a whole number
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from .errors import RobenchError
from .settings import TrainConfig

NUMBER = (int, float)
# Top-level meta.json fields: (types, required). Absent optional fields are filled by the reader.
META_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "config": ((dict,), True),
    "defense": ((str,), False),
    "epochs_done": ((int,), False),
    "finished": ((bool,), False),
    "recipe": ((int,), False),
    "metrics": ((dict,), False),
    "train_seconds": (NUMBER, False),
    "robench_version": ((str,), False),
    "versions": ((dict,), False),
    "num_parameters": ((int,), False),
    "created": ((str,), False),
    "updated": ((str,), False),
    "world_size": ((int,), False),
    "test_examples": ((int,), False),
    "norm_examples": ((int,), False),
}
REQUIRED_CONFIG = ("model", "dataset")
_ANNOTATION_TYPES = {"str": (str,), "float": NUMBER, "int": (int,), "bool": (bool,)}


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that True/False are not numbers here (JSON keeps them apart)."""
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("number" if t is float else t.__name__ for t in types if not (t is int and float in types))


def config_types() -> dict[str, tuple[tuple[type, ...], bool]]:
    """TrainConfig field -> (accepted JSON types, may be null), from the dataclass's own annotations."""
    types = {}
    for field in dataclasses.fields(TrainConfig):
        parts = [p.strip() for p in str(field.type).split("|")]
        nullable = "None" in parts
        accepted = tuple(t for p in parts if p != "None" for t in _ANNOTATION_TYPES.get(p, (object,)))
        types[field.name] = (accepted, nullable)
    return types


def check_meta(meta: Any, where: Path) -> dict[str, Any]:
    """Check a parsed meta.json; returns it. `where` names the file in the message."""
    def bad(detail: str) -> RobenchError:
        return RobenchError(f"checkpoint {where.parent} is corrupt: {where.name} {detail}")

    if not isinstance(meta, dict):
        raise bad("is not a JSON object")
    for name, (types, required) in META_FIELDS.items():
        if name not in meta:
            if required:
                raise bad(f"has no {name!r}" + (" (training config)" if name == "config" else ""))
            continue
        if not _is(meta[name], types):
            raise bad(f"field {name!r} should be a {_type_name(types)}, not {type(meta[name]).__name__}")
    if meta.get("epochs_done", 0) < 0:
        raise bad(f"field 'epochs_done' is negative ({meta['epochs_done']})")
    for key, value in meta.get("metrics", {}).items():
        if value is not None and not _is(value, NUMBER):
            raise bad(f"metric {key!r} should be a number, not {type(value).__name__}")
    config = meta["config"]
    for name in REQUIRED_CONFIG:
        if name not in config:
            raise bad(f"config has no {name!r}")
    for name, (types, nullable) in config_types().items():
        if name not in config or (config[name] is None and nullable):
            continue
        if not _is(config[name], types):
            raise bad(f"config field {name!r} should be a {_type_name(types)}, not {type(config[name]).__name__}")
    return meta


def check_weights(state: Any, header: dict[str, str], where: Path) -> None:
    """A weights file's content: string keys to tensors, and a whole-number robench_epoch if any."""
    if not isinstance(state, dict) or not state:
        raise RobenchError(f"{where} holds no tensors")
    for key, value in state.items():
        if not isinstance(key, str):
            raise RobenchError(f"{where} is not a state dict: key {key!r} is a {type(key).__name__}, not a name")
        if not torch.is_tensor(value):
            raise RobenchError(f"{where} is not a state dict: {key!r} holds a {type(value).__name__}, not a tensor")
    epoch = header.get("robench_epoch")
    if epoch is not None and not (isinstance(epoch, str) and epoch.isdigit()):
        raise RobenchError(f"checkpoint {where} is corrupt: its header's robench_epoch {epoch!r} is not a whole number")


def check_finite_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights with inf or NaN: such a model predicts one class everywhere, and its
    'robust accuracy' would be a number about nothing."""
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise RobenchError(f"weights in {where} are not finite ({bad} inf/NaN values in {key}): "
                                   "the training diverged; retrain with a smaller --lr")  # fmt: skip


def check_optimizer(payload: Any, where: Path) -> dict[str, Any]:
    """optimizer.pt: {"epoch": int >= 0, "optimizer": {"state": dict, "param_groups": list of dicts}}."""
    def bad(detail: str) -> RobenchError:
        return RobenchError(f"optimizer state {where} is corrupt: {detail}; use --force to start over")

    if not isinstance(payload, dict) or set(payload) != {"epoch", "optimizer"}:
        raise bad("not the {epoch, optimizer} record robench writes")
    if not _is(payload["epoch"], (int,)) or payload["epoch"] < 0:
        raise bad(f"epoch {payload['epoch']!r} is not a whole number")
    state = payload["optimizer"]
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or not isinstance(
        state.get("param_groups"), list
    ):
        raise bad("no optimizer state dict (state, param_groups)")
    for group in state["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise bad("a param group without its parameter list")
    for slot in state["state"].values():
        if not isinstance(slot, dict) or not all(torch.is_tensor(v) or _is(v, NUMBER) for v in slot.values()):
            raise bad("per-parameter state that is not tensors")
    return payload


def check_log(df: Any, where: Path, columns: list[str]) -> None:
    """log.csv: robench's columns, and epochs 1, 2, ... with numeric seconds."""
    import pandas as pd

    if not set(["epoch", "seconds"]) <= set(df.columns) or not set(df.columns) <= set(columns):
        raise RobenchError(f"{where} is not robench's training log (columns {', '.join(map(str, df.columns))}); "
                           "robench never merges with a file it did not write: move it away")  # fmt: skip
    epochs = pd.to_numeric(df["epoch"], errors="coerce")
    seconds = pd.to_numeric(df["seconds"], errors="coerce")
    if epochs.isna().any() or list(epochs) != list(range(1, len(df) + 1)):
        raise RobenchError(f"{where} is damaged: its epoch column is not 1, 2, 3, ...; use --force to start over")
    if seconds.isna().any() or not all(math.isfinite(v) and v >= 0 for v in seconds):
        raise RobenchError(f"{where} is damaged: its seconds column is not numeric; use --force to start over")
