"""CIFAR-10 from torchvision's on-disk layout, read without ever running code from the files.

The batch files are pickles, and unpickling runs whatever callables a file names. torchvision guards
this with the official MD5s, which also rejects every CIFAR-format directory that is not the official
download (a re-export, a subset, the small directories the tests build). Instead robench reads the
batches with a restricted unpickler: it resolves only the few numpy names an array pickle needs, so a
file naming anything else (os.system, builtins.open, ...) is refused before any of it runs, while any
real-format directory loads.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import RobenchError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
NUM_CLASSES = 10
SIDE = 32


def layout(root: Path) -> str:
    """The expected layout, for error messages."""
    return f"expected torchvision's CIFAR-10 layout: {root / FOLDER}/data_batch_1..5, test_batch"


class _Refused(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only callables a pickled numpy array needs, under the module names numpy 1 and 2 write.

    They are looked up here rather than imported by name, so numpy 2 never touches its deprecated
    `numpy.core` alias; none of them can do more than build an array or dtype from bytes.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3 pickles bytes under protocols 0-2: _codecs.encode(str, "latin1"); no other codec."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _numpy_globals()
        try:
            return SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def safe_loads(blob: bytes) -> object:
    """Unpickle `blob` with `SafeUnpickler`; latin1 as torchvision uses for the Python 2 originals."""
    return SafeUnpickler(io.BytesIO(blob), encoding="latin1").load()


def load_cifar10(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images (uint8 N x 3 x 32 x 32) and labels (int64 N), batches in file order."""
    names = TRAIN_FILES if split == "train" else TEST_FILES
    parts = [_read_batch(root / FOLDER / name, root) for name in names]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, SIDE, SIDE)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _read_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: a dict with "data" (uint8 N x 3072, channel-major rows) and "labels"."""
    if not path.is_file():
        raise RobenchError(f"CIFAR-10 not found: {path} is missing; {layout(root)}")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise RobenchError(f"cannot read CIFAR-10 batch {path}: {exc.strerror}") from None
    try:
        batch = safe_loads(blob)
    except _Refused as exc:
        raise RobenchError(
            f"refusing to unpickle CIFAR-10 batch {path}: it names {exc}, which a CIFAR-10 batch never does"
        ) from None
    except Exception as exc:  # truncated or garbled pickles raise many types
        raise RobenchError(f"CIFAR-10 batch {path} is corrupt ({type(exc).__name__}); {layout(root)}") from None
    return _check_batch(batch, path, root)


def _check_batch(batch: object, path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys may be str (the Python 2 originals read as latin1) or bytes (files pickled from Python 3)."""
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    bad = f"CIFAR-10 batch {path} is not a CIFAR-10 batch"
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise RobenchError(f"{bad}: 'data' must be a uint8 N x 3072 array; {layout(root)}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise RobenchError(f"{bad}: 'labels' must be a list of integers") from None
    if labels.shape != (len(data),):
        raise RobenchError(f"{bad}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise RobenchError(f"{bad}: labels must lie in 0..{NUM_CLASSES - 1}")
    return np.ascontiguousarray(data), labels
