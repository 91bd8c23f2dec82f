"""One slice of the paper's MNIST study on one GPU, written into $OUT as a self-contained bundle.

    python benchmarks/gpu/slice.py SLICE [--budget S] [--n N]     (run.sh does the set-up first)
    python benchmarks/gpu/slice.py --dry-run [--seeds 1]            (tiny, any device, < 1 min on CPU)

A slice is a set of (defense, seed) units of `reproduce mnist` at the paper's recipe (250 epochs,
batch 100, SGD momentum 0.9, lr 0.1 quenched at 1/3 and 2/3, Xavier init). Its units train side by
side as ONE stacked group (JR computed for all, with weight 0 where a unit has none), ordered seed
first, so that when the budget cannot hold them all, the deadline sheds whole seeds from the end and
the first seeds still finish. Finished units are evaluated (noise, FGSM, PGD on the first N test
images) and packed with `robench.bundle.write_bundle` into $OUT/<slice>.tar.gz: results store with
per-example outcomes, each unit's log.csv and meta.json, claims, report, timings, device, versions;
no weights (they do not fit $OUT's limits, and nothing needs them: claims come from the store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

STARTED = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TABLE1 = ("none", "l2", "dropout", "jr", "all")
FIGURE3 = ("base", "base+adv", "base+jr+adv")  # base+jr is Table 1's "all"
SLICES = {
    "table1-s0": (TABLE1, (0,)),
    "table1": (TABLE1, (0, 1, 2)),
    "figure3": (FIGURE3, (0, 1, 2)),
    "seeds34": (TABLE1 + FIGURE3, (3, 4)),
}
EVAL_RESERVE = 150.0  # seconds kept after training for the attacks, claims, report and bundle


def device_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
             "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}  # fmt: skip
    return facts


def slice_config(name: str, n: int, dry_run: bool, seeds: tuple[int, ...] = (0,)):
    from robench.reproduce import ReproduceConfig

    if dry_run:  # `seeds` makes two dry runs two different slices of one study (tests merge them)
        return ReproduceConfig(defenses=("none", "jr", "base+adv"), seeds=seeds, epochs=1, train_subset=300,
                               warmup_epochs=1.0, n=20, attacks="noise,fgsm,pgd",
                               eps={"noise": (0.0, 8.0), "fgsm": (0.0, 0.1), "pgd": (0.0, 0.1)})  # fmt: skip
    defenses, seeds = SLICES[name]
    return ReproduceConfig(defenses=defenses, seeds=seeds, n=n, attacks="noise,fgsm,pgd")


GROUPS: dict[str, float] = {}


def train_slice(config, study: Path, *, deadline: float | None, save_every: float) -> list[str]:
    """Train the slice's units as one side-by-side group, seed first; returns the finished run names."""
    from robench.results.store import ResultsStore
    from robench.side_by_side import train_many

    runs = sorted(config.train_configs().items(), key=lambda item: item[1].seed)
    names = {study / "runs" / name: name for name, _ in runs}

    def record(group, seconds: float) -> None:
        GROUPS[", ".join(names[j.out_dir] for j in group)] = seconds

    jobs = train_many([(c, study / "runs" / name) for name, c in runs], show_progress=False, split_programs=False,
                      save_every=save_every, deadline=deadline, on_group_done=record, stack=True)  # fmt: skip
    for job in jobs:
        if not isinstance(job.result, dict):
            print(f"[slice] {names[job.out_dir]}: {job.result}", flush=True)
    ResultsStore(study / "results.csv").close()  # an empty store until the attacks run: a study all the same
    return [names[j.out_dir] for j in jobs if isinstance(j.result, dict)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slice", nargs="?", choices=sorted(SLICES))
    parser.add_argument("--dry-run", action="store_true", help="tiny slice on whatever device there is")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds from start to the bundle in $OUT")
    parser.add_argument("--n", type=int, default=1000, help="test images for noise, FGSM and PGD")
    parser.add_argument("--work", default="/tmp/robench-slices", help="where the study directories go")
    parser.add_argument("--seeds", default="0", help="--dry-run only: its seeds, e.g. 1 or 0,1")
    args = parser.parse_args()
    if not args.dry_run and args.slice is None:
        parser.error("name a slice or pass --dry-run")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: write seeds as 0 or 0,1")
    if args.seeds != "0" and not args.dry_run:
        parser.error("--seeds is for --dry-run; a slice's seeds are its own")
    import torch

    from robench.bundle import write_bundle
    from robench.reproduce import reproduce_mnist

    name = "dry-run" if args.dry_run else args.slice
    facts = device_facts()
    print(f"[{name}] device {facts['device']}, torch {facts['torch']}, CUDA {facts['cuda']}", flush=True)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"[{name}] no CUDA device: a study slice needs the GPU (use --dry-run here)", file=sys.stderr)
        return 2
    out = Path(os.environ.get("OUT") or "gpu-out")
    out.mkdir(parents=True, exist_ok=True)
    study = Path(args.work) / name
    config = slice_config(name, args.n, args.dry_run, seeds)
    deadline = STARTED + args.budget - (5.0 if args.dry_run else EVAL_RESERVE)
    began = time.monotonic()
    finished = train_slice(config, study, deadline=None if args.dry_run else deadline, save_every=0.0 if args.dry_run else 120.0)
    trained = time.monotonic() - began
    extra = {**facts, "slice": name, "budget_seconds": args.budget, "train_seconds": trained}
    # Insurance: the training logs are what the slice is for; they reach $OUT before any attack runs.
    write_bundle(study, out / f"{name}-train.tar.gz", config=config, extra=extra)
    print(f"[{name}] trained {len(finished)} units in {trained:.1f} s: {', '.join(finished)}", flush=True)
    seeds = tuple(s for s in config.seeds if all(config.run_name(d, s) in finished for d in config.defenses))
    if not seeds:
        print(f"[{name}] no seed finished for every defense: nothing evaluated", flush=True)
        return 1
    config = replace(config, seeds=seeds)
    reproduce_mnist(config, study, show_progress=False, split_programs=False)
    wall = time.monotonic() - began
    timings = json.loads((study / "timings.json").read_text())
    extra.update(wall_seconds=wall, eval_seconds=timings.get("eval", {}), train_groups=GROUPS)
    bundle = write_bundle(study, out / f"{name}.tar.gz", config=config, extra=extra)
    for members, seconds in GROUPS.items():
        print(f"[{name}] group of {len(members.split(', '))} ({members}): {seconds:.1f} s training", flush=True)
    print(f"[{name}] wall {wall:.1f} s (train + eval + report); evaluated seeds {seeds}; "
          f"bundle {bundle} ({bundle.stat().st_size / 1e6:.2f} MB)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
