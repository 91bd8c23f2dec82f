"""Pick the torch device from a user's choice: auto, cpu, cuda or cuda:N."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import RobenchError


def resolve_device(choice: str = "auto") -> torch.device:
    """Return the device for `choice`; "auto" means the first GPU when there is one, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise RobenchError(f"unknown device {choice!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobenchError(f"device {choice!r} asked for, but no CUDA GPU is available")
    return device


def configure_tf32(enabled: bool) -> None:
    """Let CUDA matmuls and cuDNN convolutions use TF32 tensor cores (enabled) or keep full fp32.

    TF32 keeps fp32's range but rounds the inputs of matmuls and convolutions to a 10-bit mantissa,
    which makes fp32 training several times faster on Ampere and newer GPUs (H100 included); SGD
    training and attacks do not notice that rounding, so robench turns TF32 on by default on CUDA
    (PyTorch's own default is on for convolutions only). Turn it off for exact fp32: comparing
    numbers with a CPU run, checking gradients to many digits, or measuring Jacobian norms of
    nearly-flat models. The flags are process-wide and have no effect on the CPU.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off inside the block, each flag restored afterwards (also on errors).

    For the numbers robench reports as measured rather than searched: the re-check of every
    adversarial (its fresh prediction decides what counts as broken) and the exact ||J||_F rows. With
    TF32 on they would change with the GPU (TF32 rounds matmul and convolution inputs to a 10-bit
    mantissa on Ampere and newer, not on older GPUs or the CPU) and the row would not say so. Attacks
    themselves keep the process's setting: TF32 only changes where their search goes, and whatever they
    return is judged here in full fp32. No effect on the CPU.
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
