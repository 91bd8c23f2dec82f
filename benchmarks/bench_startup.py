"""`robench eval` with nothing left to do against `python -c "import torch"`, interleaved, median of rounds.

The goal (issue 24): at most 1.3x the time of importing torch. A first `eval` fills a store (a small MLP
trained here for one epoch, or `--run`); each round then times, in fresh processes, the same `eval` again
(every row present: robench.eval_done answers from the store) and `import torch`. Run:

    .venv/bin/python benchmarks/bench_startup.py [--run RUN_DIR] [--rounds 7] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parent))

ATTACKS = "noise,fgsm,pgd,cw,autoattack-fast"


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run directory (default: train a small MLP for one epoch)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    robench = [sys.executable, "-m", "robench"]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        run = args.run
        if run is None:
            run = str(Path(tmp) / "mlp")
            subprocess.run(robench + ["train", "--model", "mlp", "--epochs", "1", "--train-subset", "2000",
                                      "--out", run, "--device", "cpu"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
        rerun = robench + ["eval", run, "--attack", ATTACKS, "--eps", "0,0.05,0.1", "--n", "20", "--device", "cpu",
                           "--quiet", "--out", str(Path(tmp) / "r.csv")]  # fmt: skip
        subprocess.run(rerun, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fills the store
        torch_import = [sys.executable, "-c", "import torch"]
        times = {"eval": [], "torch": []}
        for _ in range(args.rounds):
            times["eval"].append(timed(rerun))
            times["torch"].append(timed(torch_import))
    import torch

    from common import device_label, write_section

    eval_s, torch_s = statistics.median(times["eval"]), statistics.median(times["torch"])
    lines = [f"`robench eval` with every row already in the store ({ATTACKS}, 3 ε, n=20) against "
             f"`python -c \"import torch\"`, fresh processes, interleaved, median of {args.rounds} rounds; "
             f"{device_label(torch.device('cpu'))}, torch {torch.__version__}", "",
             "| | median wall time |", "|---|---|",
             f"| `robench eval` (nothing to do) | {eval_s:.2f} s |", f"| `import torch` | {torch_s:.2f} s |", "",
             f"Ratio {eval_s / torch_s:.2f}x (goal: at most 1.3x)."]  # fmt: skip
    print("\n".join(lines))
    if args.write:
        write_section("bench_startup", "## An eval with nothing to do: `benchmarks/bench_startup.py`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
