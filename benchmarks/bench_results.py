"""The cost of writing results into a store that already holds many rows, against an empty one.

Two stores side by side in one process: one empty, one holding --rows rows (200 models x 100 rows,
each with per-example outcomes of --n images). Round by round, interleaved so machine noise hits
both alike, the benchmark times:

- **append**: committing one finished row with its outcomes (the transaction robench makes after
  every attack x ε; it includes the row's interval, its evaluation's worst case and flags);
- **evaluation**: a whole small `evaluate()` of one real model (FGSM at one ε on --n test images)
  into the store: open, clean row, attack row, and the CSV export at the end;
- **export**: rewriting the CSV from the database (done at most every 2 s and when a store closes).

The figure per method is the median over rounds. Run:

    .venv/bin/python benchmarks/bench_results.py [--rows 20000] [--rounds 7] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_label, write_section  # noqa: E402
from robench.results import ResultsStore  # noqa: E402


def _row(model: int, attack: str, eps: float, n: int, rng: np.random.Generator) -> dict:
    robust = (rng.random(n) < 0.6).astype(float)
    return {
        "model": f"runs/m{model}", "dataset": "mnist", "defense": "none", "attack": attack, "norm": "linf",
        "epsilon": eps, "accuracy": float(robust.mean()), "n": n, "seed": 0, "attack_params": "{}",
        "robench_version": "bench", "timestamp": "t", "model_hash": f"{model:016x}", "spec_hash": attack * 3,
        "value": float("nan"), "_robust": robust,
    }  # fmt: skip


def fill(store: ResultsStore, rows: int, n: int) -> None:
    """`rows` rows: 200 models x (rows / 200) rows (5 attacks over an ε grid), in one transaction per model."""
    rng = np.random.default_rng(0)
    per_model = rows // 200
    for model in range(200):
        batch = [_row(model, f"a{k % 5}", round(0.01 * (k // 5), 4), n, rng) for k in range(per_model)]
        store.add(batch, export=False)
    store.export()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="record the table in docs/PERFORMANCE.md")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from robench.evaluate import EvalConfig, evaluate
    from robench.sources import from_run
    from robench.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        train(TrainConfig(model="mlp", epochs=1, train_subset=1000, test_subset=100, norm_samples=50, device="cpu"),
              tmp / "run", show_progress=False)  # fmt: skip
        source = from_run(tmp / "run")
        paths = {"empty": tmp / "empty.csv", f"{args.rows:,} rows": tmp / "full.csv"}
        with ResultsStore(paths[f"{args.rows:,} rows"]) as store:
            fill(store, args.rows, args.n)
        fill_s = time.perf_counter() - started
        times: dict[str, dict[str, list[float]]] = {k: {"append": [], "evaluation": [], "export": []} for k in paths}
        rng = np.random.default_rng(1)
        for round_ in range(args.rounds):
            for label, path in paths.items():
                with ResultsStore(path) as store:
                    row = _row(10_000 + round_, "new", 0.1, args.n, rng)
                    t0 = time.perf_counter()
                    store.add([row], export=False)
                    times[label]["append"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    store.export()
                    times[label]["export"].append(time.perf_counter() - t0)
                config = EvalConfig(attacks="fgsm", eps=(0.1,), n=args.n, seed=round_, device="cpu")
                t0 = time.perf_counter()
                evaluate([source], config, out=path, show_progress=False)
                times[label]["evaluation"].append(time.perf_counter() - t0)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}
    empty, full = med["empty"], med[f"{args.rows:,} rows"]
    lines = [
        f"Device: {device_label(torch.device('cpu'))}; a store of {args.rows:,} rows (200 models, outcomes of "
        f"{args.n} images each; filled in {fill_s:.0f} s) against an empty one, {args.rounds} rounds interleaved, "
        "medians.", "",
        "| what | empty store | full store | full / empty |", "|---|---|---|---|",
    ]  # fmt: skip
    for what, unit in (("append", "ms"), ("evaluation", "s"), ("export", "ms")):
        scale = 1000 if unit == "ms" else 1
        lines.append(f"| {what} | {empty[what] * scale:.1f} {unit} | {full[what] * scale:.1f} {unit} | "
                     f"{full[what] / empty[what]:.2f} |")  # fmt: skip
    lines += ["", "append: one row and its outcomes committed (interval, worst case and flags of its own "
              "evaluation included). evaluation: a whole `evaluate()` of one model (clean row + FGSM at one ε "
              f"on {args.n} images, CSV exported at the end). export: the whole CSV rewritten from the database."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("bench_results", "## Writing results: `benchmarks/bench_results.py`\n\n" + table)


if __name__ == "__main__":
    main()
