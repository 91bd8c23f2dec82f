"""`robench eval` end to end: the CSV it writes, resuming after a kill, and refusing bad input."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench.cli import cli
from robench.metrics import clean_accuracy, mean_jacobian_norm
from robench.results import COLUMNS, outcomes

FAST = ["--attack", "fgsm,pgd", "--eps", "0,0.1,0.2", "--n", "200", "--device", "cpu", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory, trained_run):
    out = tmp_path_factory.mktemp("eval") / "results.csv"
    result = invoke("eval", trained_run, *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_csv_has_the_documented_columns_and_one_row_per_attack_and_eps(results_csv, trained_run):
    df = pd.read_csv(results_csv)
    assert list(df.columns) == COLUMNS
    attacks = df[~df["attack"].isin(["jacobian_norm", "jacobian_norm_normalized", "worst_case"])]
    assert sorted(zip(attacks["attack"], attacks["epsilon"])) == sorted(
        (a, e) for a in ("fgsm", "pgd") for e in (0.0, 0.1, 0.2)
    )
    assert set(df["n"]) == {200} and set(df["dataset"]) == {"mnist"} and set(df["defense"]) == {"none"}
    assert df["accuracy"].between(0, 1).all()
    assert set(df.loc[df["attack"] == "pgd", "norm"]) == {"linf"}
    assert json.loads(df.loc[df["attack"] == "pgd", "attack_params"].iloc[0])["params"]["steps"] == 40


def test_eps_zero_and_jacobian_row_match_direct_computation(results_csv, trained_model, mnist_test_small):
    model, _ = trained_model
    images, labels = mnist_test_small
    clean = clean_accuracy(model, images[:200], labels[:200])
    df = pd.read_csv(results_csv)
    for attack in ("fgsm", "pgd"):
        assert df.query("attack == @attack and epsilon == 0")["accuracy"].item() == pytest.approx(clean, abs=1e-12)
    jac = df[df["attack"] == "jacobian_norm"]
    assert len(jac) == 1
    assert jac["accuracy"].item() == pytest.approx(clean, abs=1e-12)
    assert jac["value"].item() == pytest.approx(mean_jacobian_norm(model, images[:200]), rel=1e-5)


def test_rerun_is_free_and_changes_nothing(results_csv, trained_run):
    before = results_csv.read_bytes()
    started = time.perf_counter()
    result = invoke("eval", trained_run, *FAST, "--out", results_csv)
    assert result.exit_code == 0, result.output
    assert results_csv.read_bytes() == before
    assert time.perf_counter() - started < 15  # nothing was attacked again (PGD alone takes longer)


def test_eval_table_is_printed(results_csv, trained_run):
    result = invoke("eval", trained_run, *FAST, "--out", results_csv)
    assert "pgd (linf, n=200): accuracy vs epsilon" in result.output
    assert "clean accuracy and mean test Jacobian norm" in result.output


def test_weights_file_with_arch_gives_the_same_numbers(tmp_path, results_csv, trained_run, trained_model):
    """The bare network's state dict (.pth) loads into --arch mlp and reproduces the run's rows."""
    model, _ = trained_model
    weights = tmp_path / "bare.pth"
    torch.save(model.net.state_dict(), weights)
    out = tmp_path / "arch.csv"
    result = invoke("eval", "--arch", "mlp", "--weights", weights, *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    mine = pd.read_csv(out).set_index(["attack", "epsilon"])["accuracy"]
    theirs = pd.read_csv(results_csv).set_index(["attack", "epsilon"])["accuracy"]
    pd.testing.assert_series_equal(mine.sort_index(), theirs.sort_index())
    assert set(pd.read_csv(out)["defense"]) == {"external"}


class Boom:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_inputs(tmp_path, trained_run):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text((trained_run / "meta.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"this is not a safetensors file")
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"
    with open(evil, "wb") as handle:
        pickle.dump({"net.1.weight": Boom(str(marker))}, handle)
    lenet_weights = tmp_path / "lenet.safetensors"
    (lenet_weights).write_bytes((trained_run / "model.safetensors").read_bytes())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = str(trained_run)
    return marker, [
        ([run, "--attack", "nope"], "unknown attack 'nope'"),
        ([run, "--attack", "fgsm", "--eps=-0.1"], "eps must be finite and >= 0"),
        ([run, "--attack", "fgsm", "--eps", "0,zero.1"], "cannot read eps value"),
        ([tmp_path / "missing", "--attack", "fgsm"], "no checkpoint at"),
        ([corrupt, "--attack", "fgsm"], "corrupt"),
        (["--arch", "mlp", "--weights", evil, "--attack", "fgsm"], "refused to load"),
        (["--arch", "lenet", "--weights", lenet_weights, "--attack", "fgsm"], "do not fit the architecture"),
        (["--arch", "nonesuchnet", "--weights", lenet_weights, "--attack", "fgsm"], "unknown architecture"),
        ([run, "--attack", "fgsm", "--out", blocker / "r.csv"], "cannot write results"),
    ]


def test_bad_input_gets_one_line_and_keeps_existing_rows(tmp_path, results_csv, trained_run):
    marker, cases = _bad_inputs(tmp_path, trained_run)
    before = results_csv.read_bytes()
    for args, message in cases:
        out_args = [] if "--out" in args else ["--out", results_csv]
        result = invoke("eval", *args, "--n", "50", "--device", "cpu", "--quiet", *out_args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
        assert message in lines[0], (args, lines[0])
        assert results_csv.read_bytes() == before
    assert not marker.exists(), "a pickled payload was executed"


def _eval_cmd(run, out):
    return [sys.executable, "-m", "robench", "eval", str(run), "--attack", "pgd,fgsm", "--eps",
            "0,0.05,0.1,0.15,0.2,0.3", "--n", "300", "--batch-size", "100", "--device", "cpu",
            "--quiet", "--out", str(out)]  # fmt: skip


def test_killed_eval_resumes_to_the_uninterrupted_result(tmp_path, trained_run):
    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet", "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole.csv", tmp_path / "killed.csv"
    subprocess.run(_eval_cmd(trained_run, whole), check=True, env=env, capture_output=True)
    total = len(pd.read_csv(whole))
    proc = subprocess.Popen(_eval_cmd(trained_run, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and _committed_rows(killed) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _committed_rows(killed)
    assert 0 < partial < total, f"kill landed at {partial}/{total} rows; the test proved nothing"
    subprocess.run(_eval_cmd(trained_run, killed), check=True, env=env, capture_output=True)
    resumed, reference = pd.read_csv(killed), pd.read_csv(whole)
    assert len(resumed) == total
    assert not resumed.duplicated(["model_hash", "attack", "spec_hash", "epsilon", "n", "seed"]).any()
    order = ["attack", "epsilon"]
    cols = [c for c in COLUMNS if c != "timestamp"]
    pd.testing.assert_frame_equal(
        resumed.sort_values(order)[cols].reset_index(drop=True),
        reference.sort_values(order)[cols].reset_index(drop=True),
    )
    key = ["attack", "epsilon", "example"]
    pd.testing.assert_frame_equal(outcomes(killed).sort_values(key).reset_index(drop=True),
                                  outcomes(whole).sort_values(key).reset_index(drop=True))  # fmt: skip


def _committed_rows(csv) -> int:
    """Rows committed to the store beside `csv` (read-only; 0 before it exists)."""
    import sqlite3

    db = csv.with_suffix(".db")
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    except sqlite3.OperationalError:  # created but no schema yet
        return 0
