"""Pick the torch device from a user's choice: auto, cpu, cuda or cuda:N."""

from __future__ import annotations

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
