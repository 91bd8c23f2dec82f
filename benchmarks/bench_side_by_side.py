"""Model-steps per second: K LeNet' models side by side (one StackedNet) against one after another.

"One after another" is `robench train`'s own step (`train._train_step`) on one model, so its
model-steps per second are the same for any K; "side by side" is `side_by_side.GroupTrainer._step`
on K members of one program. Both on real MNIST batches of 100, plain (no defense) and JR
(lambda 0.01, one projection, normalized units), SGD with momentum, TF32 as robench trains.
Each figure is the fastest of --rounds timed runs of --steps steps after warm-up steps, measured
in one process, side by side. Run:

    .venv/bin/python benchmarks/bench_side_by_side.py [--device auto] [--ks 1,5,15,40] [--steps 20] [--write]
    bash benchmarks/gpu/run.sh --bench        (on the GPU machine; JSON into $OUT)

It also projects the wall time of the whole study (8 recipes x 5 seeds x 150,000 steps; a third of
the models with JR) from the K = 40 figures, training only, per-epoch evaluation excluded.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import device_label, sync, write_section  # noqa: E402

STUDY_STEPS = 150_000  # 250 epochs x 600 steps
STUDY_MODELS = {"plain": 25, "jr": 15}  # 8 recipes x 5 seeds: none, l2, dropout, base, base+adv plain-ish; jr, base+jr, base+jr+adv


def fastest(run, steps: int, rounds: int, device) -> float:
    """Seconds of the fastest of `rounds` timed calls of run(steps), after 3 warm-up steps."""
    run(3)
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        run(steps)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def single_rate(config, data, steps: int, rounds: int, device) -> float:
    """Model-steps per second of `robench train`'s step on one model."""
    from robench.data import to_unit_float  # noqa: F401
    from robench.jacobian import unit_scale
    from robench.models import build_model, xavier_init_
    from robench.train import _train_step, epoch_generators

    torch.manual_seed(0)
    model = xavier_init_(build_model("lenet", "mnist", dropout=config.dropout)).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=config.l2)
    proj, _ = epoch_generators(0, 0, device)
    scale = unit_scale(model, "normalized") if config.jr > 0 else None
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    n = len(data["train_y"])

    def run(k: int) -> None:
        for i in range(k):
            idx = torch.arange(i * 100 % n, i * 100 % n + 100, device=device) % n
            _train_step(config, model, optimizer, ("autograd", scale), proj, data, idx, 0.01, 1.0, sums)

    return steps / fastest(run, steps, rounds, device)


def stacked_rate(config, k: int, steps: int, rounds: int, device, work: Path) -> float:
    """Model-steps per second of one side-by-side step of K members."""
    from robench.models import dropout_mask
    from robench.side_by_side import GroupTrainer, Job

    jobs = [Job(replace(config, seed=s), work / f"k{k}-{s}") for s in range(k)]
    trainer = GroupTrainer(jobs, show_progress=False, save_every=0, deadline=None)
    trainer.prepare()
    from robench.train import epoch_generators

    trainer.gens = [epoch_generators(j.config.seed, 0, trainer.device) for j in jobs]
    sums = torch.zeros(k, 3, dtype=torch.float64, device=trainer.device)
    n = len(trainer.data["train_y"])
    base = torch.arange(100, device=trainer.device)

    def run(count: int) -> None:
        for i in range(count):
            idx = ((base + i * 100) % n).unsqueeze(0).expand(k, -1)
            trainer._step(idx, 0.01, sums, dropout_mask)

    return k * steps / fastest(run, steps, rounds, device)


def profile(config, k: int, device, path: Path) -> None:
    """torch.profiler's operator table for 5 side-by-side JR steps of K members: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile as run_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        stacked_rate(config, k, 2, 1, device, Path(tmp))  # warm-up
        with run_profile(activities=activities) as prof:
            stacked_rate(config, k, 5, 1, device, Path(tmp))
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.write_text(f"K={k} JR side-by-side steps on {device_label(device)}, torch {torch.__version__}\n"
                    + prof.key_averages().table(sort_by=key, row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ks", default="1,5,15,40")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    parser.add_argument("--write", action="store_true", help="put the table into docs/PERFORMANCE.md")
    parser.add_argument("--profile", default=None, help="profile 5 JR steps at the largest K into this text file")
    args = parser.parse_args()

    from robench.devices import configure_tf32, resolve_device
    from robench.settings import TrainConfig
    from robench.train import _load_data

    device = resolve_device(args.device)
    configure_tf32(True)
    ks = [int(k) for k in args.ks.split(",")]
    plain = TrainConfig(model="lenet", device=str(device), train_subset=args.train_subset, test_subset=100,
                        norm_samples=10)  # fmt: skip
    programs = {"plain": plain, "jr": replace(plain, jr=0.01)}
    data = _load_data(plain, device)
    figures = {"device": device_label(device), "torch": torch.__version__, "steps": args.steps, "rounds": args.rounds,
               "rates": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in programs.items():
            alone = single_rate(config, data, args.steps, args.rounds, device)
            figures["rates"][f"{name} alone"] = alone
            print(f"{name}: one after another {alone:.1f} model-steps/s", flush=True)
            for k in ks:
                rate = stacked_rate(config, k, args.steps, args.rounds, device, Path(tmp))
                figures["rates"][f"{name} K={k}"] = rate
                print(f"{name}: side by side K={k}: {rate:.1f} model-steps/s ({rate / alone:.2f}x)", flush=True)
    rates = figures["rates"]
    kmax = max(ks)
    if args.profile:
        profile(programs["jr"], kmax, device, Path(args.profile))
    projection = sum(STUDY_MODELS[p] * STUDY_STEPS / rates[f"{p} K={kmax}"] for p in STUDY_MODELS)
    sequential = sum(STUDY_MODELS[p] * STUDY_STEPS / rates[f"{p} alone"] for p in STUDY_MODELS)
    figures["projection_seconds"] = {f"side by side K={kmax}": projection, "one after another": sequential}
    print(f"projected study training: {projection / 60:.1f} min side by side (K={kmax}), "
          f"{sequential / 60:.1f} min one after another", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1))
    if args.write:
        lines = [f"Device: {figures['device']}, torch {figures['torch']}; LeNet' on MNIST, batch 100, SGD momentum 0.9; "
                 f"fastest of {args.rounds} runs of {args.steps} steps.", "",
                 "| program | one after another | " + " | ".join(f"K={k}" for k in ks) + " |",
                 "|---|---|" + "---|" * len(ks)]  # fmt: skip
        for name in programs:
            alone = rates[f"{name} alone"]
            cells = " | ".join(f"{rates[f'{name} K={k}']:.1f} ({rates[f'{name} K={k}'] / alone:.2f}x)" for k in ks)
            lines.append(f"| {name} | {alone:.1f} | {cells} |")
        lines += ["", f"Model-steps per second (ratio to one after another). Projected training time of the whole "
                  f"study (25 plain-program and 15 JR models x 150,000 steps): {projection / 60:.0f} min side by side "
                  f"at K={kmax}, {sequential / 60:.0f} min one after another."]  # fmt: skip
        write_section("side_by_side", "\n".join(lines))


if __name__ == "__main__":
    main()
