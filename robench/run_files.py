"""The file names of a run directory and the hash that names its weights: torch-free, so that deciding
whether an evaluation is already done (`robench.eval_done`) never imports torch. `robench.checkpoint`
writes and reads these files."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
LOG_FILE = "log.csv"
OPTIMIZER_FILE = "optimizer.pt"


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256: same weights, same rows."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
