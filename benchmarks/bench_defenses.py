"""What each defense costs to train: one SGD step of LeNet' at batch 100 on real MNIST, per defense,
over a plain step, measured side by side in one run.

Each round times STEPS steps of every defense in turn (the order rotates per round, so machine noise
hits them alike); the figure per defense is its median round. The step is robench's own
(`robench.train._train_step`: the same code `robench train` runs), on the same batches for every
defense. Expected: JR with one projection about 2x a plain step, PGD-AT with K steps about K + 1
times. Run:

    .venv/bin/python benchmarks/bench_defenses.py [--device cpu] [--rounds 5] [--steps 10] [--write]

`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers.
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

from common import device_label, sync, write_section  # noqa: E402
from robench.data import load_dataset  # noqa: E402
from robench.devices import resolve_device  # noqa: E402
from robench.models import build_model, xavier_init_  # noqa: E402
from robench.train import TrainConfig, _train_step, jacobian_input_scale  # noqa: E402

DEFENSES = {
    "plain": {},
    "JR (λ=0.01, 1 projection)": {"jr": 0.01},
    "IGR (λ=1)": {"igr": 1.0},
    "FGSM-AT": {"adv_train": "fgsm", "adv_eps": 0.1},
    "PGD-AT, K=10": {"adv_train": "pgd", "adv_eps": 0.1, "adv_steps": 10},
    "TRADES, K=10": {"adv_train": "trades", "adv_eps": 0.1, "adv_steps": 10},
    "JR + PGD-AT, K=10": {"jr": 0.01, "adv_train": "pgd", "adv_eps": 0.1, "adv_steps": 10},
}
BATCH = 100


def time_steps(name: str, settings: dict, data: dict, device: torch.device, steps: int) -> float:
    """Seconds per step of `steps` SGD steps of a fresh LeNet' (after 2 untimed warm-up steps)."""
    config = TrainConfig(model="lenet", batch_size=BATCH, device=str(device), **settings).validate()
    torch.manual_seed(0)
    model = xavier_init_(build_model("lenet", "mnist")).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=config.l2)
    generator = torch.Generator(device=device).manual_seed(0)
    jr = ("auto", jacobian_input_scale(config, model))
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    order = torch.arange(len(data["train_y"]), device=device)
    batches = [order[i * BATCH : (i + 1) * BATCH] for i in range(steps + 2)]
    for idx in batches[:2]:
        _train_step(config, model, optimizer, jr, generator, data, idx, 0.01, 1.0, sums)
    sync(device)
    start = time.perf_counter()
    for idx in batches[2:]:
        _train_step(config, model, optimizer, jr, generator, data, idx, 0.01, 1.0, sums)
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    x, y = load_dataset("mnist", "train", subset=BATCH * (args.steps + 2))
    data = {"train_x": x.to(device), "train_y": y.to(device)}
    seconds = {name: [] for name in DEFENSES}
    names = list(DEFENSES)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds[name].append(time_steps(name, DEFENSES[name], data, device, args.steps))
    plain = statistics.median(seconds["plain"])
    lines = [f"One training step of LeNet' at batch {BATCH} on real MNIST, {device_label(device)}, "
             f"{args.rounds} rounds x {args.steps} steps, median round; torch {torch.__version__}.", "",
             "| defense | step (ms) | × plain |", "|---|---|---|"]  # fmt: skip
    for name in names:
        median = statistics.median(seconds[name])
        lines.append(f"| {name} | {1000 * median:.1f} | {median / plain:.2f} |")
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("bench_defenses", body)


if __name__ == "__main__":
    main()
