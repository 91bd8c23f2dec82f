"""`robench reproduce mnist`: the paper's MNIST defense grid, trained, attacked and reported.

Every step skips what is already done (finished run directories are resumed as no-ops, CSV rows
already present are not recomputed), so the command can be stopped and restarted at any time.
Layout under --out:  runs/<defense>-s<seed>/   results.csv   report/
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import RobenchError
from .train import TrainConfig

# The paper's defenses (PAPER.md): lambda_WD = 5e-4, dropout 0.5, lambda_JR = 0.01, FGSM adversarial
# training. The paper gives no adversarial-training epsilon here; robench uses 0.1 (L-inf).
ADV_EPS = 0.1
TIMINGS_FILE = "timings.json"
DEFENSES: dict[str, dict] = {
    "none": {},
    "l2": {"l2": 5e-4},
    "dropout": {"dropout": 0.5},
    "l2+dropout": {"l2": 5e-4, "dropout": 0.5},
    "jr": {"jr": 0.01},
    "adv": {"adv_train": "fgsm", "adv_eps": ADV_EPS},
    "jr+adv": {"jr": 0.01, "adv_train": "fgsm", "adv_eps": ADV_EPS},
}


@dataclass(frozen=True)
class ReproduceConfig:
    """The study's size. The defaults are the paper's recipe (250 epochs, full data, 5 seeds).

    Args:
        defenses: keys of DEFENSES to train.
        seeds: number of seeds per defense (seed 0 .. seeds-1).
        model: architecture (the paper's LeNet').
        epochs, train_subset: training length and data (None: all 60,000 images).
        n: test images attacked (None: all 10,000).
        attacks: attack or suite names, "default" (noise, FGSM, PGD, CW, AutoAttack) or "all".
        eps: per-attack epsilon grids overriding the shipped ones (quick mode shortens them).
        attack_n: per-attack cap on the test images (CW costs ~20x PGD-40 per image on a CPU).
        device: auto, cpu, cuda.
    """

    defenses: tuple[str, ...] = tuple(DEFENSES)
    seeds: int = 5
    model: str = "lenet"
    epochs: int = 250
    train_subset: int | None = None
    n: int | None = None
    attacks: str = "default"
    eps: dict[str, tuple[float, ...]] = field(default_factory=dict)
    attack_n: dict[str, int] = field(default_factory=dict)
    device: str = "auto"

    def train_configs(self) -> dict[str, TrainConfig]:
        """Run name -> TrainConfig for every defense and seed."""
        unknown = [d for d in self.defenses if d not in DEFENSES]
        if unknown:
            raise RobenchError(f"unknown defense {unknown[0]!r}; choose from {', '.join(DEFENSES)}")
        if self.seeds < 1:
            raise RobenchError(f"--seeds must be >= 1, got {self.seeds}")
        base = TrainConfig(model=self.model, dataset="mnist", epochs=self.epochs,
                           train_subset=self.train_subset, device=self.device)  # fmt: skip
        return {
            f"{name}-s{seed}": replace(base, seed=seed, **DEFENSES[name])
            for name in self.defenses
            for seed in range(self.seeds)
        }


# --quick: under 10 minutes on 2 CPU cores. Short grids keep the costly attacks (PGD-40, CW)
# affordable on a CPU; the full study uses the shipped grids.
QUICK = ReproduceConfig(
    seeds=1, epochs=2, train_subset=5000, n=100, attacks="noise,fgsm,pgd,cw",
    eps={"noise": (0.0, 4.0, 8.0, 12.0), "fgsm": (0.0, 0.1, 0.2, 0.3), "pgd": (0.0, 0.1, 0.2, 0.3),
         "cw": (0.0, 1.0, 2.0, 3.0)},
    attack_n={"cw": 50},  # CW costs about 0.5 s per image for LeNet' on 2 cores
)  # fmt: skip


def reproduce_mnist(config: ReproduceConfig, out: str | Path, *, fmt: str = "md", show_progress: bool = True):
    """Train every defense x seed, evaluate all of them, write the report; skip finished work.

    Each stage's wall time in this invocation goes to <out>/timings.json (a restart that finds
    everything done records near-zero times), which `benchmarks/bench_suite.py` reports.
    Returns the report (summary table and files written).
    """
    from .attacks.suites import resolve
    from .evaluate import EvalConfig, evaluate
    from .fileio import write_json_atomic
    from .report import write_report
    from .sources import from_run
    from .train import train

    out = Path(out)
    runs = config.train_configs()
    specs = resolve(config.attacks)
    timings: dict[str, dict[str, float]] = {"train": {}, "eval": {}}
    started = time.perf_counter()
    for name, train_config in runs.items():
        with _timed(timings["train"], name):
            train(train_config, out / "runs" / name, resume=True, show_progress=show_progress)
    sources = [from_run(out / "runs" / name) for name in runs]
    csv = out / "results.csv"
    for spec in specs:
        eps = config.eps.get(spec.name)
        caps = [x for x in (config.n, config.attack_n.get(spec.name)) if x is not None]
        n = min(caps) if caps else None
        eval_config = EvalConfig(attacks=spec.name, eps=eps, n=n, device=config.device)
        with _timed(timings["eval"], spec.name):
            evaluate(sources, eval_config, out=csv, show_progress=show_progress)
    report = write_report([csv], out / "report", fmt=fmt)
    timings["total"] = {"seconds": time.perf_counter() - started}
    write_json_atomic(out / TIMINGS_FILE, timings)
    return report


@contextmanager
def _timed(into: dict[str, float], name: str):
    """Add the wall time of the with-block to into[name]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - start
