"""What Square's adaptive budget (`square-pe-adaptive`) costs in strength and saves in queries, on models the
rule was not chosen on.

For each model and ε, one full `square-pe` run (5000 queries, robench's per-example draws) on the correctly
classified images of a held-out slice of the MNIST test set (default: images 100-199, the AutoAttack
benchmark uses the first 100) records every example's best margin after each query; each drop rule
(progress_window, progress_slack) is then replayed on those paths (`Square.replay`: an adaptive run's path is
the full run's until its drop; tests/test_autoattack_adaptive.py checks the replay against real runs). Square
runs here alone on every correct image, not on a cascade's survivors: a harder test of the rule than the
suite gives it. Models: `--run` (repeatable) and, with `--rounded`, the demo's plain LeNet' with its input
rounded to 255 levels (every input gradient 0, so Square alone carries the number there). Run:

    .venv/bin/python benchmarks/bench_square_budget.py --run RUN [--run RUN ...] [--rounded] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_label, write_section  # noqa: E402

RULES = ((500, 2.0), (500, 1.0), (250, 2.0), (250, 1.0), (250, 0.5))  # the shipped rule first
DEMO_PLAIN = "checkpoints/demo/lenet-plain"


class RoundedInput(nn.Module):
    """The input rounded to 255 levels: every input gradient exactly 0 (as tests/test_trust.py wraps it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


def main(argv=None) -> None:
    from robench.attacks.foolbox_engine import example_generators
    from robench.attacks.robench_engine import Square
    from robench.checkpoint import load
    from robench.data import load_dataset, to_unit_float

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="run directory (repeatable)")
    parser.add_argument("--rounded", action="store_true", help=f"also {DEMO_PLAIN} with its input rounded")
    parser.add_argument("--first", type=int, default=100, help="first test image of the slice")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", default="0.05,0.1,0.15")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    models = {f"{DEMO_PLAIN}, input rounded to 255 levels": RoundedInput(load(DEMO_PLAIN)[0])} if args.rounded else {}
    models.update({run: load(run)[0] for run in args.run})
    if not models:
        sys.exit("no model: pass --run RUN and/or --rounded")
    images, labels = load_dataset("mnist", "test", subset=args.first + args.n)
    x, y = to_unit_float(images[args.first :]), labels[args.first :]
    head = " | ".join(f"window {w}, slack {s:g}" for w, s in RULES)
    lines = [f"Test images {args.first}-{args.first + args.n - 1}, L∞, Square alone on every correctly classified one; "
             f"{device_label(torch.device('cpu'))}, torch {torch.__version__}. Each cell: breaks lost against the "
             "full Square / share of its queries spent (the first rule is `square-pe-adaptive`'s).", "",
             f"| model | ε | correct | full Square breaks | {head} |", "|---|---|---|---|" + "---|" * len(RULES)]  # fmt: skip
    totals = {rule: [0, 0.0, 0.0] for rule in RULES}
    for name, model in models.items():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            keep = (model(x).argmax(1) == y).nonzero().flatten()
        for eps in (float(e) for e in args.eps.split(",")):
            full = Square()
            full.record = True
            t0 = time.perf_counter()
            full(model, x[keep], y[keep], eps, example_generators(0, keep + args.first, len(keep), stream=7))
            seconds = time.perf_counter() - t0
            broken, spent = Square().replay(full.margin_history)
            cells = []
            for window, slack in RULES:
                b, q = Square(progress_window=window, progress_slack=slack).replay(full.margin_history)
                lost, share = int((broken & ~b).sum()), float(q.sum() / spent.sum())
                totals[(window, slack)][0] += lost
                totals[(window, slack)][1] += float(q.sum())
                totals[(window, slack)][2] += float(spent.sum())
                cells.append(f"{lost} / {share:.2f}")
            lines.append(f"| `{name}` | {eps:g} | {len(keep)} | {int(broken.sum())} | " + " | ".join(cells) + " |")
            print(lines[-1], f"({seconds:.0f} s)", flush=True)
    lines.append("| all | | | | " + " | ".join(f"{t[0]} / {t[1] / t[2]:.2f}" for t in totals.values()) + " |")
    print("\n".join(lines))
    if args.write:
        write_section("bench_square_budget", "## Square's adaptive budget: `benchmarks/bench_square_budget.py`\n\n"
                      + __doc__.split("\n\n")[1] + "\n\n" + "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
