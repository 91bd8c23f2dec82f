"""PGD-40 throughput: robench's Foolbox path vs Foolbox as usually called vs a plain torch loop.

All three attack the same model (LeNet' by default) on the same real MNIST images with the same
batch, interleaved round by round in one process so machine noise hits them alike; the figure per
method is the median over rounds. Run:

    .venv/bin/python benchmarks/bench_eval.py [--device cpu] [--batch 500] [--rounds 3] [--write]

`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import torch  # noqa: E402

from robench.attacks import fixed_eps_accuracy, foolbox_model, resolve_attacks  # noqa: E402
from robench.data import load_dataset, to_unit_float  # noqa: E402
from robench.devices import resolve_device  # noqa: E402
from robench.models import build_model, xavier_init_  # noqa: E402

EPS = 0.1
STEPS = 40


def plain_pgd(model, x, y, eps: float, steps: int = STEPS, rel_step: float = 2.5 / STEPS) -> torch.Tensor:
    """Textbook L-inf PGD in plain torch: random start, signed steps, projection; returns robust mask."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + rel_step * eps * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        return model(x + delta).argmax(1) == y


def foolbox_default(fmodel, x, y, eps: float) -> torch.Tensor:
    """Foolbox's LinfPGD as its README calls it: parameters left trainable (they collect .grad)."""
    import foolbox as fb

    attack = fb.attacks.LinfPGD(steps=STEPS, rel_stepsize=2.5 / STEPS, random_start=True)
    _, _, success = attack(fmodel, x, y, epsilons=eps)
    return ~success


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = xavier_init_(build_model(args.model, "mnist")).to(device).eval()
    images, labels = load_dataset("mnist", "test", subset=args.batch)
    x, y = to_unit_float(images).to(device), labels.to(device)
    spec = resolve_attacks("pgd")[0]
    fmodel = foolbox_model(model, device)
    methods = {
        "robench (Foolbox LinfPGD, parameters frozen)": lambda: fixed_eps_accuracy(spec, fmodel, x, y, EPS, seed=0),
        "Foolbox LinfPGD, default call": lambda: foolbox_default(fmodel, x, y, EPS),
        "plain torch PGD loop": lambda: plain_pgd(model, x, y, EPS),
    }
    for fn in methods.values():  # warm-up
        fn()
    times = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name].append(time_it(fn, device))
    model.zero_grad(set_to_none=True)
    rows = [(name, args.batch / statistics.median(ts)) for name, ts in times.items()]
    plain = rows[-1][1]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"PGD-{STEPS} (L-inf, eps={EPS}), {args.model}, batch {args.batch}, median of {args.rounds} interleaved rounds, "
        f"device: {device_name}, torch {torch.__version__}",
        "",
        "| method | images/s | vs plain torch |",
        "|---|---:|---:|",
        *[f"| {name} | {rate:,.0f} | {rate / plain:.2f}x |" for name, rate in rows],
    ]
    print("\n".join(lines))
    if args.write:
        write_section("bench_eval", "\n".join(lines))


def write_section(name: str, body: str) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> in docs/PERFORMANCE.md."""
    path = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Performance\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{start}\n{body}\n{end}\n"
    path.write_text(text)
    print(f"updated {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
