"""PGD-40 and CW throughput: robench's Foolbox path vs Foolbox as usually called vs a plain torch loop.

All three attack the same trained LeNet' on the same real MNIST images with the same batch,
interleaved round by round in one process so machine noise hits them alike; the figure per method
is the median over rounds. `--cw-check` also measures the shipped CW preset's accuracy against the
same attack run 5x longer (1,000 steps per binary-search step). Run:

    .venv/bin/python benchmarks/bench_eval.py [--device cpu] [--batch 500] [--cw-batch 100] [--rounds 3] \
        [--cw-check] [--write]

`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers.
`--autoattack N [--run RUN_DIR] [--aa-eps 0,0.05,0.1,0.15,0.2]` instead runs `bench_autoattack.py`:
robench's AutoAttack suite (a cascade) against torchattacks' `AutoAttack(version="standard")` on the
first N images, per example.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_label, sync, write_section  # noqa: E402
from robench.attacks import (  # noqa: E402
    accuracy_from_distances,
    fixed_eps_accuracy,
    foolbox_model,
    minimal_distances,
    resolve_attacks,
)
from robench.data import load_dataset, to_unit_float  # noqa: E402
from robench.devices import resolve_device  # noqa: E402

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


def time_it(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def plain_cw(model, x, y, *, steps: int, binary_search_steps: int, stepsize: float, initial_const: float) -> torch.Tensor:
    """Carlini-Wagner L2 in plain torch, step for step Foolbox's algorithm; returns minimal L2 distances.

    Adam on w in tanh space, loss ||x' - x||^2 + c * max(Z_y - max_{i != y} Z_i, 0), early abort
    every steps/10 steps when the loss stops falling, then a binary search over c per example.
    """
    to_model = lambda w: (torch.tanh(w) * 0.5 + 0.5)  # noqa: E731
    w0 = torch.atanh((x - 0.5) / 0.5 * 0.999999)
    onehot = torch.nn.functional.one_hot(y, model(x[:1]).shape[1]).bool()
    consts = torch.full((len(x),), initial_const, device=x.device)
    lower, upper = torch.zeros_like(consts), torch.full_like(consts, math.inf)
    best = torch.full_like(consts, math.inf)
    for _ in range(binary_search_steps):
        delta = torch.zeros_like(x, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=stepsize)
        found = torch.zeros_like(consts, dtype=torch.bool)
        previous = math.inf
        for step in range(steps):
            adv = to_model(w0 + delta)
            logits = model(adv)
            margin = (logits[onehot] - logits.masked_fill(onehot, -math.inf).amax(1)).clamp(min=0)
            norms_sq = (adv - x).flatten(1).pow(2).sum(1)
            loss = (norms_sq + consts * margin).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % math.ceil(steps / 10) == 0:
                if not loss.item() <= 0.9999 * previous:
                    break
                previous = loss.item()
            with torch.no_grad():
                fooled = logits.argmax(1) != y
                found |= fooled
                best = torch.where(fooled, torch.minimum(best, norms_sq.sqrt()), best)
        upper = torch.where(found, torch.minimum(upper, consts), upper)
        lower = torch.where(found, lower, torch.maximum(lower, consts))
        consts = torch.where(torch.isinf(upper), consts * 10, (lower + upper) / 2)
    return best


def pgd_methods(model, fmodel, x, y) -> dict:
    spec = resolve_attacks("pgd")[0]
    return {
        "robench (Foolbox LinfPGD, parameters frozen)": lambda: fixed_eps_accuracy(spec, fmodel, x, y, EPS, seed=0),
        "Foolbox LinfPGD, default call": lambda: foolbox_default(fmodel, x, y, EPS),
        "plain torch PGD loop": lambda: plain_pgd(model, x, y, EPS),
    }


def cw_methods(model, fmodel, x, y) -> dict:
    import foolbox as fb

    spec = resolve_attacks("cw")[0]
    params = {k: spec.params[k] for k in ("steps", "binary_search_steps", "stepsize", "initial_const")}
    return {
        "robench (shipped CW preset, parameters frozen)": lambda: minimal_distances(spec, fmodel, x, y, seed=0),
        "Foolbox L2CarliniWagnerAttack, default call (same preset)": lambda: fb.attacks.L2CarliniWagnerAttack(
            **spec.params)(fmodel, x, y, epsilons=None),
        "plain torch CW loop (same preset)": lambda: plain_cw(model, x, y, **params),
    }


def race(methods: dict, batch: int, rounds: int, device) -> list[tuple[str, float]]:
    """Images/s per method: one warm-up call each, then `rounds` interleaved rounds, median time."""
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(time_it(fn, device))
    return [(name, batch / statistics.median(ts)) for name, ts in times.items()]


def table(title: str, rows: list[tuple[str, float]]) -> list[str]:
    plain = rows[-1][1]
    return [title, "", "| method | images/s | vs plain torch |", "|---|---:|---:|",
            *[f"| {name} | {rate:,.1f} | {rate / plain:.2f}x |" for name, rate in rows]]  # fmt: skip


def cw_strength(fmodel, x, y) -> list[str]:
    """Accuracy at every CW grid epsilon: shipped preset vs the same attack with 1,000 steps."""
    spec = resolve_attacks("cw")[0]
    long = dataclasses.replace(spec, params={**spec.params, "steps": 1000})
    grid = spec.default_eps("mnist")
    fast, slow = (minimal_distances(s, fmodel, x, y, seed=0) for s in (spec, long))
    gaps = [abs(accuracy_from_distances(fast, e) - accuracy_from_distances(slow, e)) * 100 for e in grid]
    return [
        "", f"CW strength on the same {len(y)} images: shipped preset (5 x 200 steps) vs 5 x 1,000 steps",
        "", "| eps | " + " | ".join(f"{e:g}" for e in grid) + " |", "|---|" + "---:|" * len(grid),
        "| preset accuracy | " + " | ".join(f"{accuracy_from_distances(fast, e):.3f}" for e in grid) + " |",
        "| 1,000-step accuracy | " + " | ".join(f"{accuracy_from_distances(slow, e):.3f}" for e in grid) + " |",
        "", f"Largest gap: {max(gaps):.1f} points; median distance {fast[fast.isfinite()].median():.3f} vs "
        f"{slow[slow.isfinite()].median():.3f}.",
    ]  # fmt: skip


def trained_lenet(run: str | None, device) -> torch.nn.Module:
    """The model under attack: a run directory's, else LeNet' trained 1 epoch on 10,000 images (CW's cost
    depends on how far the decision boundary is, so an untrained model would flatter it)."""
    from robench.sources import from_run
    from robench.train import TrainConfig, train

    if run is not None:
        return from_run(run).model.to(device).eval()
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        config = TrainConfig(model="lenet", epochs=1, train_subset=10_000, test_subset=1000, norm_samples=0,
                             lr=0.05, device=str(device))  # fmt: skip
        train(config, tmp, show_progress=False)
        return from_run(tmp).model.to(device).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run", default=None, help="run directory of the model to attack (default: train one)")
    parser.add_argument("--batch", type=int, default=500, help="images per PGD call")
    parser.add_argument("--cw-batch", type=int, default=None, help="images per CW call (default: --batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cw-check", action="store_true", help="also compare CW accuracy with a 1,000-step run")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    parser.add_argument("--autoattack", type=int, default=None, metavar="N",
                        help="only time robench's autoattack suite against torchattacks' AutoAttack on N images")
    parser.add_argument("--aa-eps", default="0,0.05,0.1,0.15,0.2", help="eps grid of --autoattack")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.autoattack is not None:  # the race lives in bench_autoattack.py; this form keeps working
        from bench_autoattack import main as autoattack_main

        autoattack_main(["--n", str(args.autoattack), "--eps", args.aa_eps, "--device", args.device]
                        + (["--run", args.run] if args.run else []) + (["--write"] if args.write else []))
        return
    torch.manual_seed(0)
    model = trained_lenet(args.run, device)
    images, labels = load_dataset("mnist", "test", subset=max(args.batch, args.cw_batch or 0))
    x, y = to_unit_float(images).to(device), labels.to(device)
    fmodel = foolbox_model(model, device)
    where = f"device: {device_label(device)}, torch {torch.__version__}"
    lines = table(f"PGD-{STEPS} (L-inf, eps={EPS}), LeNet', batch {args.batch}, median of {args.rounds} "
                  f"interleaved rounds, {where}", race(pgd_methods(model, fmodel, x, y), args.batch, args.rounds, device))  # fmt: skip
    cw_n = args.cw_batch or args.batch
    xc, yc = x[:cw_n], y[:cw_n]
    lines += [""] + table(f"CW-L2 (shipped preset), same model, batch {cw_n}, median of {args.rounds} "
                          f"interleaved rounds, {where}", race(cw_methods(model, fmodel, xc, yc), cw_n, args.rounds, device))  # fmt: skip
    if args.cw_check:
        lines += cw_strength(fmodel, xc, yc)
    model.zero_grad(set_to_none=True)
    print("\n".join(lines))
    if args.write:
        write_section("bench_eval", "\n".join(lines))


if __name__ == "__main__":
    main()
