"""`robench reproduce mnist`: the defense grid end to end, and restarts that redo no finished work."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from robench.cli import cli
from robench.reproduce import DEFENSES, QUICK, ReproduceConfig, reproduce_mnist

TINY = ReproduceConfig(
    defenses=("none", "jr"), seeds=1, model="mlp", epochs=1, train_subset=600, n=60,
    attacks="fgsm", eps={"fgsm": (0.0, 0.1, 0.2)}, device="cpu",
)  # fmt: skip


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_grid_runs_and_a_restart_redoes_nothing(tmp_path):
    report = reproduce_mnist(TINY, tmp_path, show_progress=False)
    df = pd.read_csv(tmp_path / "results.csv")
    assert sorted(df["defense"].unique()) == ["jr=0.01", "none"]
    assert len(df) == 2 * (1 + 3)  # per model: jacobian_norm row + 3 fgsm eps rows
    assert (tmp_path / "report" / "summary.csv").exists() and len(report.summary) == 2
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert sorted(timings["train"]) == ["jr-s0", "none-s0"] and list(timings["eval"]) == ["fgsm"]
    assert timings["total"]["seconds"] >= sum(timings["train"].values()) + timings["eval"]["fgsm"] > 0
    runs = tmp_path / "runs"
    before = _mtimes(runs)
    csv_before = (tmp_path / "results.csv").read_bytes()
    reproduce_mnist(TINY, tmp_path, show_progress=False)
    assert _mtimes(runs) == before, "a finished model was trained again"
    assert (tmp_path / "results.csv").read_bytes() == csv_before


def test_interrupted_training_is_resumed_not_restarted(tmp_path):
    """A run directory left mid-training (epoch 1 of 2) is continued, finished runs are kept."""
    two_epochs = ReproduceConfig(**{**TINY.__dict__, "epochs": 2, "defenses": ("none",)})
    reproduce_mnist(two_epochs, tmp_path, show_progress=False)
    meta_path = tmp_path / "runs" / "none-s0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    created = meta["created"]
    assert meta["epochs_done"] == 2 and meta["config"]["epochs"] == 2
    reproduce_mnist(two_epochs, tmp_path, show_progress=False)
    assert json.loads(meta_path.read_text())["created"] == created


def test_defense_grid_is_the_papers():
    configs = ReproduceConfig(seeds=2).train_configs()
    assert len(configs) == 2 * len(DEFENSES) == 14
    assert configs["jr-s1"].jr == 0.01 and configs["jr-s1"].seed == 1
    assert configs["l2+dropout-s0"].defense == "l2=0.0005+dropout=0.5"
    assert configs["jr+adv-s0"].defense == "adv=fgsm@0.1+jr=0.01"
    assert configs["none-s0"].epochs == 250 and configs["none-s0"].batch_size == 100
    assert configs["none-s0"].lr == 0.1 and configs["none-s0"].schedule == "quench"


def test_unknown_defense_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["reproduce", "mnist", "--defenses", "none,magic", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown defense 'magic'" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_quick_reproduction_finishes_and_restarts_for_free(tmp_path):
    """`robench reproduce mnist --quick` (< 10 min on 2 CPU cores), then a restart that trains nothing."""
    result = CliRunner().invoke(cli, ["reproduce", "mnist", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(summary) == len(DEFENSES) * QUICK.seeds
    jr = summary[summary["defense"] == "jr=0.01"]["jacobian_norm"].item()
    none = summary[summary["defense"] == "none"]["jacobian_norm"].item()
    assert jr < none
    before = _mtimes(tmp_path / "runs")
    result = CliRunner().invoke(cli, ["reproduce", "mnist", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert _mtimes(tmp_path / "runs") == before
