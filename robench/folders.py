"""ImageNet-style class-per-folder trees (<root>/val/<class>/<image>), for evaluating torchvision models.

Images go through the standard ImageNet evaluation crop (resize the short side to 256, center-crop
224) and stay uint8, like every other robench dataset: attacks see pixels in [0, 1] after
`to_unit_float`, and the ImageNet mean/std live inside the model. Decoding JPEGs is the slow part,
so it runs in DataLoader workers, and only the first `subset` images (the ones evaluation uses) are
ever decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import RobenchError

RESIZE = 256
CROP = 224
SPLIT_FOLDERS = {"train": "train", "test": "val"}
BATCH = 64


def split_folder(root: Path, split: str) -> Path:
    """<root>/val for the test split (ImageNet's labelled evaluation set), <root>/train for train."""
    return Path(root) / SPLIT_FOLDERS[split]


def layout(folder: Path) -> str:
    """The expected layout, for error messages."""
    return f"expected a class-per-folder tree: {folder}/<class>/<image> (ImageNet's {folder.name} layout)"


def eval_transform():
    """Resize 256 + center crop 224 on the decoded PIL image, then uint8 C x H x W (no scaling)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(RESIZE), v2.CenterCrop(CROP), v2.PILToTensor()])


def folder_classes(folder: Path) -> list[str]:
    """The class names, sorted as ImageFolder sorts them (label i is the i-th folder)."""
    from torchvision.datasets.folder import find_classes

    if not folder.is_dir():
        raise RobenchError(f"image folder {folder} not found; {layout(folder)}")
    try:
        classes, _ = find_classes(folder)
    except FileNotFoundError:
        raise RobenchError(f"image folder {folder} has no class folders; {layout(folder)}") from None
    return classes


def _regular_image(path: str) -> bool:
    """ImageFolder's extension test, plus a refusal of anything but a regular file under an image
    name: decoding a FIFO would block forever."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    from .fileio import refuse_special

    if not has_file_allowed_extension(path, IMG_EXTENSIONS):
        return False
    refuse_special(path)
    return True


def default_workers() -> int:
    """min(8, CPU count): enough to keep one GPU fed with decoded 224 px images."""
    return min(8, os.cpu_count() or 1)


def load_image_folder(
    folder: Path, *, subset: int | None = None, num_workers: int | None = None, pin_memory: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the first `subset` images of `folder` in ImageFolder's order (classes, then file names).

    Args:
        folder: a class-per-folder tree.
        subset: how many images to decode (None: all of them).
        num_workers: DataLoader worker processes (None: `default_workers()`; 0 decodes in-process).
        pin_memory: put the images in page-locked memory, for a fast copy to the GPU (None: when
            CUDA is available; pass False for a CPU run, which then never initializes CUDA).

    Returns:
        (images, labels): uint8 N x 3 x 224 x 224 and int64 N.
    """
    from torchvision.datasets import ImageFolder

    folder_classes(folder)  # a one-line error for a missing folder or one without class folders
    try:
        dataset = ImageFolder(str(folder), transform=eval_transform(), is_valid_file=_regular_image)
    except FileNotFoundError:
        raise RobenchError(f"image folder {folder} holds no images; {layout(folder)}") from None
    count = len(dataset) if subset is None else min(subset, len(dataset))
    labels = torch.tensor(dataset.targets[:count], dtype=torch.int64)
    images = _allocate(count, folder, torch.cuda.is_available() if pin_memory is None else pin_memory)
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise RobenchError(f"num_workers must be >= 0, got {workers}")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(count)), batch_size=BATCH, shuffle=False,
        num_workers=min(workers, -(-count // BATCH)),  # no idle workers for a small subset
    )  # fmt: skip
    start = 0
    try:
        for batch, _ in loader:
            images[start : start + len(batch)] = batch
            start += len(batch)
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        # from a worker the message carries the worker's traceback; its last line names the file
        raise RobenchError(f"cannot decode an image under {folder}: {str(exc).strip().splitlines()[-1]}") from None
    return images, labels


def _allocate(count: int, folder: Path, pin: bool) -> torch.Tensor:
    """One uint8 tensor for all images (batches are copied in, so the loader itself need not pin)."""
    try:
        return torch.empty((count, 3, CROP, CROP), dtype=torch.uint8, pin_memory=pin)
    except RuntimeError:
        gib = count * 3 * CROP * CROP / 2**30
        raise RobenchError(
            f"{count} images from {folder} need {gib:.1f} GiB as uint8; pass a smaller subset (--n)"
        ) from None
