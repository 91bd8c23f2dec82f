"""How close a Square query is to what this CPU can do: one forward pass of a model, per image, against the
machine's own fp32 matrix-multiply rate, at the batch sizes Square sees in the AutoAttack cascade.

Why (issue 24): Square's 5000 queries on the examples no gradient attack breaks are half of robench's
`autoattack` time, and every faithful AutoAttack makes those same queries. Whether a suite can still be made
much faster without skipping queries turns on one number: how far the forward pass runs below the machine's
peak. Each variant is timed in interleaved rounds (median); floating-point work is counted from the layers'
shapes (2 x multiply-adds of every Conv2d and Linear), and the reference is a 2048^3 fp32 `torch.mm`, the best
rate the same process reaches. bf16 (autocast) is shown for what lower precision would buy: robench does not
search in bf16 (other numbers, other paths). Run:

    .venv/bin/python benchmarks/bench_forward.py [--model lenet] [--batches 100,50,10] [--rounds 7] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def forward_flops(model: nn.Module, sample: torch.Tensor) -> float:
    """Floating-point operations of one forward pass of `sample` (2 per multiply-add of Conv2d and Linear)."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += 2.0 * output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += 2.0 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model(sample)
    for hook in hooks:
        hook.remove()
    return total


def seconds(step, repeats: int) -> float:
    """Mean seconds of one `step()` over `repeats` calls, after one warm-up call."""
    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet", help="robench model name (dataset mnist); weights do not matter")
    parser.add_argument("--batches", default="100,50,10", help="batch sizes (Square's survivors per query)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)

    from common import Bf16Search, device_label, write_section

    from robench.attacks.fast_copy import attack_model
    from robench.models import build_model

    torch.manual_seed(0)
    model = build_model(args.model, "mnist").eval()
    batches = [int(b) for b in args.batches.split(",")]
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm_flops = 2.0 * 2048**3

    def variants(x):
        copy = attack_model(model, x)
        assert copy is not model, "the channels_last copy was refused for this model"

        bf16 = Bf16Search(copy)
        return {"model (default memory order)": lambda: model(x), "robench's channels_last copy": lambda: copy(x),
                "the copy under bf16 autocast (not used)": lambda: bf16(x)}  # fmt: skip

    times: dict[tuple, list[float]] = {}
    with torch.inference_mode():
        inputs = {n: torch.rand(n, 1, 28, 28) for n in batches}
        flops = {n: forward_flops(model, inputs[n][:1]) for n in batches}
        steps = {n: variants(inputs[n]) for n in batches}
        for _ in range(args.rounds):  # interleaved: every variant once per round
            times.setdefault(("mm", "fp32"), []).append(seconds(lambda: torch.mm(a, b), 3))
            times.setdefault(("mm", "bf16"), []).append(seconds(lambda: torch.mm(a.bfloat16(), b.bfloat16()), 3))
            for n in batches:
                for name, step in steps[n].items():
                    times.setdefault((n, name), []).append(seconds(step, max(5, 2000 // n)))
    peak = {kind: mm_flops / statistics.median(times[("mm", kind)]) / 1e9 for kind in ("fp32", "bf16")}
    lines = [f"One forward pass of `{args.model}` (MNIST shape, {flops[batches[0]] / 1e6:.1f} MFLOP per image counted "
             f"from its Conv2d and Linear layers), median of {args.rounds} interleaved rounds; "
             f"{device_label(torch.device('cpu'))}, torch {torch.__version__}. Reference: a 2048³ `torch.mm` in the "
             f"same process, {peak['fp32']:.0f} GFLOP/s in fp32 ({peak['bf16']:.0f} GFLOP/s in bf16).", "",
             "| batch | variant | ms per image | GFLOP/s | share of fp32 `mm` |", "|---|---|---|---|---|"]  # fmt: skip
    for n in batches:
        for name in steps[n]:
            per_image = statistics.median(times[(n, name)]) / n
            rate = flops[n] / per_image / 1e9
            lines.append(f"| {n} | {name} | {per_image * 1e3:.3f} | {rate:.0f} | {rate / peak['fp32']:.0%} |")
    print("\n".join(lines))
    if args.write:
        write_section("bench_forward", "## A Square query against the machine: `benchmarks/bench_forward.py`\n\n"
                      + "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
