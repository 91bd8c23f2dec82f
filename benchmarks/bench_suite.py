"""Wall time of the whole MNIST study: every defense trained, then attacked with every attack.

Runs `robench.reproduce.reproduce_mnist` (what `robench reproduce mnist` runs) into a fresh
directory and reports the time of each stage from the study's timings.json. Presets:

- `quick`: `robench reproduce mnist --quick` (target: <= 10 min on 2 CPU cores);
- `study`: the seven defenses, one seed, LeNet' on all 60,000 training images for --epochs epochs
  (default: the paper's 250), then noise, FGSM, PGD and CW on all 10,000 test images with the
  shipped grids (target: <= 15 min on one H100).

    .venv/bin/python benchmarks/bench_suite.py --preset quick [--device cpu] [--write]
    .venv/bin/python benchmarks/bench_suite.py --preset study --epochs 250 [--write]

`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers
(bench_suite_quick or bench_suite_study).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import device_label, write_section  # noqa: E402
from robench.devices import resolve_device  # noqa: E402
from robench.reproduce import QUICK, TIMINGS_FILE, ReproduceConfig, reproduce_mnist  # noqa: E402

TARGETS = {"quick": "<= 10 min on 2 CPU cores", "study": "<= 15 min on one H100"}


def preset(name: str, epochs: int | None, device: str) -> ReproduceConfig:
    """The study sizes this benchmark times."""
    if name == "quick":
        config = QUICK
    else:
        config = ReproduceConfig(seeds=1, epochs=250, attacks="noise,fgsm,pgd,cw")
    if epochs is not None:
        config = replace(config, epochs=epochs)
    return replace(config, device=device)


def describe(config: ReproduceConfig) -> str:
    images = f"{config.train_subset:,}" if config.train_subset else "60,000"
    tested = f"{config.n:,}" if config.n else "10,000"
    caps = ", ".join(f"{a} on {n}" for a, n in config.attack_n.items())
    return (f"{len(config.defenses)} defenses x {len(config.seeds)} seed(s), {config.model} on {images} images for "
            f"{config.epochs} epochs; attacks {config.attacks} on {tested} test images" + (f" ({caps})" if caps else ""))  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(TARGETS), default="quick")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's training epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="study directory to keep (default: a temporary one)")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    config = preset(args.preset, args.epochs, str(device))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        started = time.perf_counter()
        reproduce_mnist(config, out, show_progress=sys.stderr.isatty())
        wall = time.perf_counter() - started
        timings = json.loads((out / TIMINGS_FILE).read_text())
    rows = [(f"train {name}", s) for name, s in timings["train"].items()]
    rows += [(f"eval {name} (all defenses)", s) for name, s in timings["eval"].items()]
    lines = [
        f"Preset `{args.preset}`: {describe(config)}. Device: {device_label(device)}, torch {torch.__version__}. "
        f"Target: {TARGETS[args.preset]}.",
        "",
        "| stage | wall time |",
        "|---|---:|",
        *[f"| {name} | {s / 60:.1f} min |" for name, s in rows],
        f"| **total** (report included) | **{wall / 60:.1f} min** |",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(f"bench_suite_{args.preset}", "\n".join(lines))


if __name__ == "__main__":
    main()
