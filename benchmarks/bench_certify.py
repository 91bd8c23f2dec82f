"""Certification time per image: IBP, CROWN and the MILP on a 784-16-16-10 MLP, IBP and CROWN on LeNet'.

Both networks are trained here on real MNIST (the MLP 2 epochs, LeNet' 1 epoch, on the first 3,000 training
images; Adam, seed 0), then certified on the first test images at L∞ ε. A row gives the wall time per
image (the batch's time divided by its size for IBP and CROWN, the mean per-image solve for the MILP), the
share certified, and the share decided (certified, or broken by a re-checked counterexample; the rest is
unknown). Bounds run in float64 on the device; the MILP on the CPU with scipy's HiGHS. Run:

    .venv/bin/python benchmarks/bench_certify.py [--device cpu] [--n-mlp 50] [--n-lenet 20] [--threads 1] [--write]

`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers.
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

from common import device_label, sync, write_section  # noqa: E402
from robench.certify import certify, verify_milp  # noqa: E402
from robench.data import load_dataset, to_unit_float  # noqa: E402
from robench.devices import resolve_device  # noqa: E402
from robench.models import Normalize, build_model  # noqa: E402

MNIST = ((0.1307,), (0.3081,))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
          device: torch.device) -> nn.Module:  # fmt: skip
    """Adam, mini-batches of 64, seed 0 (the global RNG is left as it was)."""
    model = model.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x))
            for start in range(0, len(x), 64):
                idx = order[start : start + 64]
                loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()


def row(name: str, method: str, eps: float, run, n: int, device: torch.device) -> str:
    sync(device)
    start = time.perf_counter()
    result = run()
    sync(device)
    wall = time.perf_counter() - start
    counts = result.counts()
    per_image = result.seconds.mean().item() if method == "MILP" else wall / n
    return (f"| {name} | {method} | {eps:g} | {per_image * 1e3:.1f} | {counts['certified'] / n:.2f} | "
            f"{(counts['certified'] + counts['broken']) / n:.2f} | {counts['unknown']} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-mlp", type=int, default=50)
    parser.add_argument("--n-lenet", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=10.0, help="MILP seconds per image")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the table names them)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    images, labels = load_dataset("mnist", "train", subset=3000)
    x_train = to_unit_float(images)
    test_images, test_labels = load_dataset("mnist", "test", subset=max(args.n_mlp, args.n_lenet))
    x_test, y_test = to_unit_float(test_images).to(device), test_labels.to(device)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mlp = nn.Sequential(Normalize(*MNIST), nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16),
                            nn.ReLU(), nn.Linear(16, 10))  # fmt: skip
        lenet = build_model("lenet", "mnist")
    mlp, lenet = train(mlp, x_train, labels, 2, 1e-2, device), train(lenet, x_train, labels, 1, 1e-3, device)
    lines = [f"Certification per image, {device_label(device)}, torch {torch.__version__}, L∞, MILP time limit "
             f"{args.time_limit:g} s per image (on the CPU)", "",
             "| model | method | ε | ms / image | certified | decided | unknown |", "|---|---|---|---|---|---|---|"]
    for eps in (0.01, 0.02, 0.04):
        x, y, n = x_test[: args.n_mlp], y_test[: args.n_mlp], args.n_mlp
        name = f"MLP 784-16-16-10 (n={n})"
        lines.append(row(name, "IBP", eps, lambda: certify(mlp, x, y, eps, method="ibp"), n, device))
        lines.append(row(name, "CROWN", eps, lambda: certify(mlp, x, y, eps, method="crown"), n, device))
        lines.append(row(name, "MILP", eps, lambda: verify_milp(mlp, x, y, eps, time_limit=args.time_limit), n,
                         device))  # fmt: skip
    for eps in (0.005, 0.01, 0.02):
        x, y, n = x_test[: args.n_lenet], y_test[: args.n_lenet], args.n_lenet
        name = f"LeNet' (n={n})"
        lines.append(row(name, "IBP", eps, lambda: certify(lenet, x, y, eps, method="ibp"), n, device))
        lines.append(row(name, "CROWN", eps, lambda: certify(lenet, x, y, eps, method="crown"), n, device))
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("bench_certify", table)


if __name__ == "__main__":
    main()
