"""Where a JR training step's time goes: torch.profiler over plain and JR (n_proj=1) LeNet' steps.

Prints, per step kind, the operators that take most of the step's self time (CPU, or CUDA
kernels on a GPU) and the share of the step they take, so PERFORMANCE.md can say what a missed
target is waiting on. Run:

    .venv/bin/python benchmarks/profile_jr.py [--device cpu] [--batch 64] [--steps 5] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from common import device_label, write_section  # noqa: E402
from bench_jr import LAM, algorithm1_penalty, make_step  # noqa: E402
from robench.devices import resolve_device  # noqa: E402
from robench.models import build_model, xavier_init_  # noqa: E402

TOP = 8


def profile_step(step, x, y, device, steps: int):
    """Profile `steps` calls of `step` after two warm-up calls; returns the profiler's key averages."""
    for _ in range(2):
        step(x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof.key_averages()


def top_rows(averages, device, steps: int) -> list[str]:
    """The TOP operators by self time, as markdown rows with ms per step and share of the total."""
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in averages if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    rows = [f"| `{e.key}` | {e.count // steps} | {getattr(e, attr) / 1e3 / steps:.2f} | "
            f"{100 * getattr(e, attr) / total:.0f}% |" for e in events[:TOP]]  # fmt: skip
    return rows + [f"| all operators | | {total / 1e3 / steps:.2f} | 100% |"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = xavier_init_(build_model("lenet", "mnist")).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    kinds = {"plain step": None, f"JR step (n_proj=1, lambda={LAM})": lambda m, xb, g: algorithm1_penalty(m, xb, 1, g)}
    unit = "CUDA kernel" if device.type == "cuda" else "CPU"
    lines = [f"LeNet', batch {args.batch}, {args.steps} profiled steps after 2 warm-up steps, self {unit} time, "
             f"device: {device_label(device)}, torch {torch.__version__}"]  # fmt: skip
    for name, penalty in kinds.items():
        averages = profile_step(make_step(model, opt, penalty, gen), x, y, device, args.steps)
        lines += ["", f"**{name}**", "", "| operator | calls/step | ms/step | share |", "|---|---:|---:|---:|"]
        lines += top_rows(averages, device, args.steps)
    print("\n".join(lines))
    if args.write:
        write_section("profile_jr", "\n".join(lines))


if __name__ == "__main__":
    main()
