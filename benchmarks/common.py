"""What every benchmark shares: naming the device, waiting for it, and recording a table in
docs/PERFORMANCE.md between a benchmark's markers."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch
from torch import nn

PERFORMANCE_MD = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"


def device_label(device: torch.device) -> str:
    """The device as a benchmark table names it: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_section(name: str, body: str) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> in docs/PERFORMANCE.md, or
    append a section with those markers; the rest of the page is left as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = PERFORMANCE_MD.read_text() if PERFORMANCE_MD.exists() else "# Performance\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{start}\n{body}\n{end}\n"
    PERFORMANCE_MD.write_text(text)
    print(f"updated {PERFORMANCE_MD}", file=sys.stderr)


class Bf16Search(nn.Module):
    """`net` run under CPU bf16 autocast, its logits handed back in fp32 (what a search in bf16 would see;
    robench does not search in bf16: benchmarks/bench_square_bf16.py measures why)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()
