"""What recording each example's path costs (robench.attacks.failure.PathTracer): the same attack on the same
model and images, traced and untraced (the spec with its loss cleared, which turns tracing off), interleaved
in one run so the ratio is measured side by side. Usage: python benchmarks/bench_tracing.py RUN_DIR [N] [REPS]."""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from robench.attacks import foolbox_model, load_specs
from robench.attacks.runners import fixed_eps_outcomes
from robench.checkpoint import load
from robench.data import load_dataset, to_unit_float


def main() -> None:
    run, n, reps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200, int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(1)
    model, _ = load(run)
    x, y = load_dataset("mnist", "test", subset=n)
    x = to_unit_float(x)
    fmodel = foolbox_model(model.eval(), "cpu")
    specs = load_specs()
    for name in ("pgd", "apgd-ce"):
        traced = specs[name]
        plain = dataclasses.replace(traced, loss="")  # not traced: `AttackSpec.traced` needs a ce/dlr loss
        times = {"traced": [], "untraced": []}
        for _ in range(reps):
            for label, spec in (("traced", traced), ("untraced", plain)):
                start = time.perf_counter()
                out = fixed_eps_outcomes(spec, fmodel, x, y, 0.1, seed=0)
                times[label].append(time.perf_counter() - start)
            assert bool((out.robust >= 0).all())
        best = {k: min(v) for k, v in times.items()}
        print(f"{name}: traced {best['traced']:.2f} s, untraced {best['untraced']:.2f} s, "
              f"ratio {best['traced'] / best['untraced']:.2f} (best of {reps}, n={n}, 1 CPU thread)")


if __name__ == "__main__":
    main()
