"""robench's `autoattack` cascade against torchattacks' AutoAttack, side by side, per model and per example.

For each model (`--run`, repeatable; default: the demo's plain and JR LeNet' under checkpoints/demo/),
on the first N MNIST test images and one ε grid, in this order in one process:

1. robench `--attack autoattack` (APGD-CE > APGD-T > FAB-T > Square 5000, a cascade over examples and ε),
   with each member's time and survivors per ε (the profile);
2. torchattacks `AutoAttack(version="standard")` at each ε, as torchattacks ships it: its APGD, APGD-T
   and FAB-T run their class default of 10 steps, where AutoAttack's standard version runs 100;
3. with `--adaptive`, robench's `autoattack-adaptive` (3 targets for APGD-T and FAB-T, Square's adaptive
   budget), compared per example with robench's `autoattack` (the goal: never more than 0.5 points higher);
4. with `--published`, torchattacks' same four attacks at AutoAttack's published settings (100 steps each,
   9 targets, Square 5000; Croce & Hein 2020), through torchattacks' MultiAttack, at each ε;
5. with `--copies`, what robench's channels_last copy of a conv model buys (`robench.attacks.fast_copy`): robench's
   suite (the adaptive one with `--adaptive`) again searching on the model itself (`ROBENCH_FAST_COPY=0`), and
   torchattacks' shipped suite attacking that copy (what a torchattacks user converting the model by hand gets).

Every adversarial any of them returns is re-checked the same way (robench's `verify_adversarials`). The
per-example comparison counts, at each ε, the examples torchattacks broke that robench did not (the goal:
at most 1 in 200 of those torchattacks broke). Run:

    .venv/bin/python benchmarks/bench_autoattack.py [--run RUN_DIR ...] [--n 100] \
        [--eps 0,0.05,0.1,0.15,0.2] [--adaptive] [--published] [--copies] [--write]

(`benchmarks/bench_eval.py --autoattack N` runs the same.) `--write` puts the tables into
docs/PERFORMANCE.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_label, write_section  # noqa: E402

DEMO_RUNS = ("checkpoints/demo/lenet-plain", "checkpoints/demo/lenet-jr0.01-normalized")


def robench_autoattack(source, n: int, grid: list[float], device, suite: str = "autoattack") -> tuple[float, dict, list]:
    """(seconds, {ε: robust bool (n,)}, profile rows (ε, member, survivors, broken, seconds)) of one of
    robench's suites."""
    import robench.evaluate_cascade as evaluate_module
    from robench.evaluate import EvalConfig, evaluate
    from robench.results import outcomes

    profile, member_broken = [], evaluate_module._member_broken

    def timed(member, step, eps, alive, distances, failures):
        t0, before = time.perf_counter(), int(alive.sum())
        broken = member_broken(member, step, eps, alive, distances, failures)
        profile.append((eps, member.name, before, int(broken.sum()), time.perf_counter() - t0))
        return broken

    evaluate_module._member_broken = timed  # the profile: every member call, timed where the cascade makes it
    try:
        with tempfile.TemporaryDirectory(prefix="bench-aa-") as tmp:
            t0 = time.perf_counter()
            evaluate([source], EvalConfig(attacks=suite, eps=tuple(grid), n=n, device=str(device),
                                          jacobian_n=0), out=Path(tmp) / "aa.csv", show_progress=False)  # fmt: skip
            seconds = time.perf_counter() - t0
            rows = outcomes(Path(tmp) / "aa.csv")
    finally:
        evaluate_module._member_broken = member_broken
    rows = rows[rows["attack"] == suite]
    robust = {e: rows[np.isclose(rows["epsilon"], e)].sort_values("example")["robust"].to_numpy() >= 1 for e in grid}
    return seconds, robust, profile


def torchattacks_autoattack(model, x, y, grid: list[float], published: bool, attacked=None) -> tuple[float, dict]:
    """(seconds, {ε: robust bool (n,)}) of torchattacks' AutoAttack per ε: as shipped, or at AutoAttack's
    published settings (100 steps), re-checked by robench's verifier on `model`. `attacked`: the module
    torchattacks attacks (default: `model`)."""
    import torchattacks

    from robench.attacks import foolbox_model, verify_adversarials

    fmodel = foolbox_model(model, x.device)
    model = model if attacked is None else attacked
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).cpu().numpy()
    robust, seconds = {}, 0.0
    for eps in grid:
        if eps == 0:
            robust[eps] = correct
            continue
        t0 = time.perf_counter()
        if published:
            attack = torchattacks.MultiAttack([
                torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
                torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0),
                torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                 n_classes=10, seed=0),
                torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0),
            ])  # fmt: skip
        else:
            attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
        advs = attack(x, y)
        seconds += time.perf_counter() - t0
        broken = verify_adversarials(fmodel, x, advs, y, eps, "linf").cpu().numpy()
        robust[eps] = correct & ~broken
    return seconds, robust


ADAPTIVE = "autoattack-adaptive"


def adaptive_lines(ours: tuple[float, dict], adaptive: tuple[float, dict, list], shipped_s: float,
                   grid: list[float]) -> list[str]:  # fmt: skip
    """How the adaptive suite compares with robench's `autoattack` (its strength, per example) and with
    torchattacks' shipped suite (its time); its own profile per member."""
    (ours_s, ours), (seconds, robust, profile) = ours, adaptive
    missed = [(e, int((robust[e] & ~ours[e]).sum()), int((~ours[e]).sum())) for e in grid if e > 0]
    gap = max(100 * (robust[e].mean() - ours[e].mean()) for e in grid)
    by_member: dict[str, float] = {}
    for _, member, _, _, s in profile:
        by_member[member] = by_member.get(member, 0.0) + s
    return [f"`{ADAPTIVE}`: {seconds:.0f} s, **{shipped_s / seconds:.2f}x** faster than torchattacks' AutoAttack as "
            f"shipped and {ours_s / seconds:.2f}x faster than robench's `autoattack`; examples `autoattack` broke "
            "that it did not: " + ", ".join(f"ε {e:g}: {m} of {b}" for e, m, b in missed)
            + f"; its robust accuracy above `autoattack`'s by at most {gap:+.1f} points "
            f"(goal: at most +0.5). Per member: " + ", ".join(f"{m} {s:.0f} s" for m, s in by_member.items())]


def fast_copy_off():
    """robench's attacks search on the model itself, not on its channels_last copy (`robench.attacks.fast_copy`)."""
    return mock.patch.dict(os.environ, {"ROBENCH_FAST_COPY": "0"})


def race(run: str, n: int, grid: list[float], device, published: bool, adaptive: bool = False,
         copies: bool = False) -> list[str]:  # fmt: skip
    from robench.attacks.fast_copy import attack_model
    from robench.data import load_dataset, to_unit_float
    from robench.sources import from_run

    source = from_run(run)
    model = source.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = load_dataset("mnist", "test", subset=n)
    x, y = to_unit_float(images).to(device), labels.to(device)
    ours_s, ours, profile = robench_autoattack(source, n, grid, device)
    methods = [("robench `--attack autoattack` (cascade over examples and ε)", ours_s, ours)]
    if adaptive:
        fast = robench_autoattack(source, n, grid, device, suite=ADAPTIVE)
        methods.append((f"robench `--attack {ADAPTIVE}` (3 targets, Square's adaptive budget)", *fast[:2]))
    # torchattacks' shipped suite; with --copies also on robench's channels_last copy, the two interleaved per ε
    # so that drift of the machine hits both alike
    runs = [torchattacks_autoattack(model, x, y, [e], published=False, attacked=attacked)
            for e in grid for attacked in ((None, attack_model(model, x)) if copies else (None,))]  # fmt: skip
    merged = [(sum(r[0] for r in runs[k :: 1 + copies]), {e: r[1][e] for r, e in zip(runs[k :: 1 + copies], grid)})
              for k in range(1 + copies)]  # fmt: skip
    shipped = ("torchattacks `AutoAttack(version=\"standard\")` as shipped (10 steps), per ε", *merged[0])
    others = [shipped]
    if published:
        others.append(("torchattacks' four attacks at AutoAttack's published settings (100 steps), per ε",
                       *torchattacks_autoattack(model, x, y, grid, published=True)))  # fmt: skip
    if copies:  # what the channels_last copy buys robench, and what it would buy torchattacks
        with fast_copy_off():
            own = robench_autoattack(source, n, grid, device, suite=ADAPTIVE if adaptive else "autoattack")
        methods.append((f"robench `--attack {ADAPTIVE if adaptive else 'autoattack'}` searching on the model itself "
                        "(`ROBENCH_FAST_COPY=0`)", *own[:2]))  # fmt: skip
        others.append(("torchattacks `AutoAttack(version=\"standard\")` as shipped (10 steps) on robench's "
                       "channels_last copy of the model, per ε", *merged[1]))  # fmt: skip
    methods += others
    lines = [f"**`{run}`** (defense: {source.defense}), first {n} MNIST test images, L∞; "
             f"{device_label(device)}, torch {torch.__version__}", "",
             "| | wall time | speed-up of robench | " + " | ".join(f"acc. at {e:g}" for e in grid) + " |",
             "|---|---|---|" + "---|" * len(grid)]  # fmt: skip
    for name, seconds, robust in methods:
        lines.append(f"| {name} | {seconds:.0f} s | {seconds / ours_s:.2f}x | "
                     + " | ".join(f"{robust[e].mean():.3f}" for e in grid) + " |")  # fmt: skip
    lines.append("")
    if adaptive:
        lines += adaptive_lines((ours_s, ours), fast, shipped[1], grid) + [""]
    for name, _, robust in others:
        missed = [(e, int((~robust[e] & ours[e]).sum()), int((~robust[e]).sum())) for e in grid if e > 0]
        lines.append(f"Examples {name.split(', per ε')[0]} broke that robench did not: "
                     + ", ".join(f"ε {e:g}: {m} of {b}" for e, m, b in missed)
                     + f"; robench broke {sum(int((~ours[e] & robust[e]).sum()) for e in grid)} that it did not.")
    lines += ["", "Profile of robench's cascade (each member's calls where the cascade makes them):", "",
              "| ε | member | survivors handed | broken | seconds | share |", "|---|---|---|---|---|---|"]
    total = sum(p[4] for p in profile) or 1.0
    for eps, member, handed, broken, seconds in profile:
        lines.append(f"| {eps:g} | {member} | {handed} | {broken} | {seconds:.1f} | {seconds / total:.0%} |")
    by_member: dict[str, float] = {}
    for _, member, _, _, seconds in profile:
        by_member[member] = by_member.get(member, 0.0) + seconds
    lines += ["", "Per member over the grid: " + ", ".join(f"{m} {s:.0f} s ({s / total:.0%})" for m, s in by_member.items())]
    return lines


def main(argv=None) -> None:
    from robench.devices import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=None, help="run directory (repeatable; default: the demo's two)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", default="0,0.05,0.1,0.15,0.2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--published", action="store_true", help="also torchattacks at AutoAttack's 100 steps")
    parser.add_argument("--adaptive", action="store_true", help=f"also robench's {ADAPTIVE} suite")
    parser.add_argument("--copies", action="store_true",
                        help="also robench without its channels_last copy, and torchattacks' shipped suite with it")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    runs = args.run or [r for r in DEMO_RUNS if Path(r).is_dir()]
    if not runs:
        sys.exit("no run directory: pass --run, or run `make demo` first (it trains checkpoints/demo/)")
    grid = [float(e) for e in args.eps.split(",")]
    lines = []
    for run in runs:
        lines += race(run, args.n, grid, device, args.published, args.adaptive, args.copies) + [""]
        print("\n".join(lines), flush=True)
    if args.write:
        write_section("bench_autoattack", "## AutoAttack: `benchmarks/bench_autoattack.py`\n\n" + "\n".join(lines).rstrip())


if __name__ == "__main__":
    main()
