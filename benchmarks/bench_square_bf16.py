"""What a Square that searches in bf16 would buy and cost: robench's `square-pe` (5000 queries, per-example
draws) on the channels_last copy in fp32, as robench runs it, against the same Square on that copy under bf16
autocast, side by side (interleaved per ε), every returned point re-checked in fp32 on the model itself.

Why (issue 24): Square's forward passes are half of `autoattack`'s time on a CPU and already run at about two
thirds of the machine's fp32 matrix-multiply rate (`bench_forward.py`); this CPU's AMX units run the forward
pass 2.5x faster in bf16. bf16 margins carry three significant digits, so the search takes other steps and
may stop on an example whose bf16 margin says broken while fp32 says not: the table counts such false
claims, breaks lost and gained against the fp32 Square, and the time. robench does not use bf16; this
measures whether it should. Run:

    .venv/bin/python benchmarks/bench_square_bf16.py [--run RUN ...] [--first 100] [--n 100] [--eps 0.05,0.1,0.15] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

DEMO_RUNS = ["checkpoints/demo/lenet-plain", "checkpoints/demo/lenet-jr0.01-normalized"]


def main(argv=None) -> None:
    from common import Bf16Search, device_label, write_section

    from robench.attacks.failure import margins
    from robench.attacks.fast_copy import attack_model
    from robench.attacks.foolbox_engine import example_generators
    from robench.attacks.robench_engine import Square
    from robench.attacks.verify import verify_adversarials
    from robench.checkpoint import load
    from robench.data import load_dataset, to_unit_float

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="run directory (repeatable; default: the demo's two)")
    parser.add_argument("--first", type=int, default=100, help="first test image of the slice")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", default="0.05,0.1,0.15")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    images, labels = load_dataset("mnist", "test", subset=args.first + args.n)
    x, y = to_unit_float(images[args.first :]), labels[args.first :]
    lines = [f"Test images {args.first}-{args.first + args.n - 1}, L∞, `square-pe` (5000 queries) alone on every "
             f"correctly classified one (seed 0, draws per example), on robench's channels_last copy in fp32 and under bf16 autocast, interleaved "
             f"per ε; every point re-checked in fp32 on the model; {device_label(torch.device('cpu'))}, "
             f"torch {torch.__version__}.", "",
             "| model | ε | correct | fp32: breaks, s | bf16: breaks, s | speed-up | lost / gained by bf16 | bf16 false claims |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    totals = [0.0, 0.0, 0, 0, 0, 0, 0]  # fp32 s, bf16 s, fp32 breaks, bf16 breaks, lost, gained, false claims
    for run in args.run or DEMO_RUNS:
        model = load(run)[0].eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            keep = (model(x).argmax(1) == y).nonzero().flatten()
        xs, ys = x[keep], y[keep]
        fast = attack_model(model, xs)
        for eps in (float(e) for e in args.eps.split(",")):
            found, seconds = {}, {}
            for name, searcher in (("fp32", fast), ("bf16", Bf16Search(fast))):
                t0 = time.perf_counter()
                adv = Square()(searcher, xs, ys, eps, example_generators(0, keep + args.first, len(keep), stream=7))
                seconds[name] = time.perf_counter() - t0
                found[name] = verify_adversarials(model, xs, adv, ys, eps, "linf")
                if name == "bf16":
                    with torch.no_grad():
                        claimed = margins(searcher(adv), ys) <= 0
                    false_claims = int((claimed & ~found[name]).sum())
            fp, bf = found["fp32"], found["bf16"]
            lost, gained = int((fp & ~bf).sum()), int((bf & ~fp).sum())
            row = [seconds["fp32"], seconds["bf16"], int(fp.sum()), int(bf.sum()), lost, gained, false_claims]
            totals = [t + r for t, r in zip(totals, row)]
            lines.append(f"| `{run}` | {eps:g} | {len(keep)} | {row[2]}, {row[0]:.0f} s | {row[3]}, {row[1]:.0f} s | "
                         f"{row[0] / row[1]:.2f}x | {lost} / {gained} | {false_claims} |")  # fmt: skip
            print(lines[-1], flush=True)
    lines.append(f"| all | | | {totals[2]}, {totals[0]:.0f} s | {totals[3]}, {totals[1]:.0f} s | "
                 f"{totals[0] / totals[1]:.2f}x | {totals[4]} / {totals[5]} | {totals[6]} |")  # fmt: skip
    print("\n".join(lines))
    if args.write:
        write_section("bench_square_bf16", "## A Square searching in bf16: `benchmarks/bench_square_bf16.py`\n\n"
                      + "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
