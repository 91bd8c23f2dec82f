"""The results store on real evaluations: concurrent writers, the worst case, intervals, paired
comparisons, batch-size independence, old CSVs, merging."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from robench.attacks import PROTOCOL
from robench.cli import cli
from robench.evaluate import EvalConfig, evaluate
from robench.results import JACOBIAN_ATTACKS, LEGACY_COLUMNS, outcomes, read_results
from robench.results.stats import paired_difference, proportion_ci
from robench.sources import from_run
from robench.train import TrainConfig, train

KEY = ["model_hash", "attack", "spec_hash", "epsilon", "n", "seed", "protocol"]
ENV = {**os.environ, "GIT_PYTHON_REFRESH": "quiet", "OMP_NUM_THREADS": "1"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def jr_run(tmp_path_factory):
    """A second real model: a JR-trained MLP (1 epoch on 1,000 images)."""
    run = tmp_path_factory.mktemp("store-runs") / "mlp-jr"
    train(TrainConfig(model="mlp", epochs=1, lr=0.05, train_subset=1000, test_subset=100, norm_samples=50,
                      jr=0.1, device="cpu"), run, show_progress=False)  # fmt: skip
    return run


@pytest.fixture(scope="module")
def study(tmp_path_factory, trained_run, jr_run):
    """Both models under FGSM, PGD (L∞) and PGD-L2, CW (L2) on the first 120 images; CW's grid lacks 1.5."""
    out = tmp_path_factory.mktemp("store") / "study.csv"
    sources = [from_run(trained_run), from_run(jr_run)]
    for attacks, eps in (("fgsm,pgd", (0.0, 0.05, 0.1)), ("pgd-l2", (0.0, 1.0, 1.5)), ("cw", (0.0, 1.0))):
        evaluate(sources, EvalConfig(attacks=attacks, eps=eps, n=120, device="cpu"), out=out, show_progress=False)
    return out


def _eval(run, out, *args):
    return [sys.executable, "-m", "robench", "eval", str(run), "--n", "100", "--device", "cpu", "--quiet",
            "--out", str(out), *args]  # fmt: skip


@pytest.mark.parametrize("case", ["different attacks", "same attack", "different models"])
def test_two_evals_on_one_store_lose_nothing(tmp_path, trained_run, jr_run, case):
    out = tmp_path / "shared.csv"
    first = ["--attack", "fgsm,pgd", "--eps", "0,0.1,0.2"]
    second = {"different attacks": ["--attack", "noise", "--eps", "0,4,8"], "same attack": first,
              "different models": first}[case]  # fmt: skip
    other = jr_run if case == "different models" else trained_run
    procs = [subprocess.Popen(_eval(run, out, *args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for run, args in ((trained_run, first), (other, second))]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    rows = pd.read_csv(out, dtype={"model_hash": str, "spec_hash": str})
    assert not rows.duplicated(KEY).any()
    # exactly the rows of the same work done one job after the other
    alone = tmp_path / "alone.csv"
    for run, args in ((trained_run, first), (other, second)):
        subprocess.run(_eval(run, alone, *args), env=ENV, check=True, capture_output=True, timeout=300)
    reference = pd.read_csv(alone, dtype={"model_hash": str, "spec_hash": str})
    assert sorted(map(tuple, rows[KEY].values.tolist())) == sorted(map(tuple, reference[KEY].values.tolist()))
    merged = rows.merge(reference, on=KEY, suffixes=("", "_ref"))
    np.testing.assert_array_equal(merged["accuracy"], merged["accuracy_ref"])
    per_row = outcomes(out).groupby(KEY).size()
    assert len(per_row) == len(rows) and (per_row == 100).all()  # every row kept all its outcomes


def test_writers_checking_one_folder_at_once_never_fail(tmp_path):
    """Every evaluation proves its results folder writable before it starts; two starting together once
    removed each other's probe file and one failed with "No such file or directory" (seen in CI)."""
    from concurrent.futures import ThreadPoolExecutor

    from robench.fileio import ensure_writable_dir

    def check(_):
        for _ in range(100):
            ensure_writable_dir(tmp_path, "cannot write results")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, range(4)))  # re-raises the first failure
    assert list(tmp_path.iterdir()) == []  # no probe left behind


def test_worst_case_is_the_per_example_and_of_the_attacks(study):
    rows, per_example = read_results(study), outcomes(study)
    worst = rows[rows["attack"] == "worst_case"]
    assert set(worst["norm"]) == {"linf", "l2"} and len(worst) == 2 * (3 + 3)  # 2 models x (3 L∞ + 3 L2 eps)
    for row in worst.to_dict("records"):
        mine = per_example[(per_example["model_hash"] == row["model_hash"]) & (per_example["norm"] == row["norm"])]
        eps = row["epsilon"]
        robust = np.ones(120, dtype=bool)
        for attack, group in mine[~mine["attack"].isin(["worst_case", *JACOBIAN_ATTACKS])].groupby("attack"):
            if group["distance"].notna().any():  # CW: broken at eps when its minimal distance <= eps
                d = group[group["epsilon"] == group["epsilon"].iloc[0]].sort_values("example")["distance"].to_numpy()
                robust &= d > eps
            else:  # protocol 3: a break at any ε' <= ε counts at ε (the balls nest)
                for _, at in group[group["epsilon"] <= eps + 1e-12].groupby("epsilon"):
                    robust &= at.sort_values("example")["robust"].to_numpy() >= 1
        assert row["accuracy"] == pytest.approx(robust.mean(), abs=1e-12)
        others = rows[(rows["model_hash"] == row["model_hash"]) & (rows["norm"] == row["norm"])
                      & np.isclose(rows["epsilon"], eps) & ~rows["attack"].isin(["worst_case", *JACOBIAN_ATTACKS])]
        assert (row["accuracy"] <= others["accuracy"] + 1e-12).all()
    # CW has no row at L2 eps 1.5, yet its distances fold in there: the worst case is below PGD-L2 alone
    at15 = worst[(worst["norm"] == "l2") & np.isclose(worst["epsilon"], 1.5)]
    assert '"cw"' in at15["attack_params"].iloc[0] and '"pgd-l2"' in at15["attack_params"].iloc[0]
    assert worst[worst["norm"] == "linf"]["accuracy"].iloc[1] < 1


def test_intervals_agree_with_scipy_and_hold_at_the_edges(study):
    rows = read_results(study)
    for row in rows.to_dict("records"):
        k = round(row["accuracy"] * row["n"])
        ci = binomtest(k, row["n"]).proportion_ci(method="exact")
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert proportion_ci(0.0, 1) == pytest.approx((0.0, 0.975))
    assert proportion_ci(1.0, 1) == pytest.approx((0.025, 1.0))
    low, high = proportion_ci(0.0, 200)
    assert low == 0 and 0 < high < 0.02
    low, high = proportion_ci(1.0, 200)
    assert high == 1 and 0.98 < low < 1
    low, high = proportion_ci(0.55, 10)  # noise: 5.5 of 10, between the intervals at 5 and 6
    assert low == pytest.approx(proportion_ci(0.5, 10)[0]) and high == pytest.approx(proportion_ci(0.6, 10)[1])


def test_compare_matches_the_rows_and_scipy(study, trained_run, jr_run):
    result = invoke("compare", jr_run, trained_run, "--attack", "pgd", "--results", study)
    assert result.exit_code == 0, result.output
    rows, per_example = read_results(study), outcomes(study)
    hashes = {r: from_run(r).model_hash for r in (trained_run, jr_run)}
    for eps in (0.05, 0.1):
        a = per_example.query("model_hash == @hashes[@jr_run] and attack == 'pgd' and epsilon == @eps")
        b = per_example.query("model_hash == @hashes[@trained_run] and attack == 'pgd' and epsilon == @eps")
        ra, rb = a.sort_values("example")["robust"].to_numpy(), b.sort_values("example")["robust"].to_numpy()
        diff = paired_difference(ra, rb)
        acc = rows.set_index(["model_hash", "attack", "epsilon"])["accuracy"]
        assert diff.difference == pytest.approx(acc[hashes[jr_run], "pgd", eps] - acc[hashes[trained_run], "pgd", eps])
        discordant = binomtest(diff.a_only, diff.a_only + diff.b_only, 0.5).pvalue if diff.a_only + diff.b_only else 1
        assert diff.p_value == pytest.approx(discordant)
        assert diff.low <= diff.difference <= diff.high
        assert f"{100 * diff.difference:+.1f}" in result.output
    worst = invoke("compare", jr_run, trained_run, "--results", study)
    assert "jr=0.1 vs none, worst case L∞ ε=0.1: " in worst.output and "n=120" in worst.output
    bad = invoke("compare", jr_run, "nosuchmodel", "--results", study)
    assert bad.exit_code == 1 and "no model 'nosuchmodel'" in bad.output and "Traceback" not in bad.output


def test_batch_size_changes_no_number(tmp_path, trained_run):
    """Per-example random starts and noise, CW on fixed chunks: --batch-size 500 and 37 agree exactly."""
    results = {}
    for batch in (500, 37):
        out = tmp_path / f"b{batch}.csv"
        for attacks, eps in (("fgsm,pgd", "0,0.1"), ("noise,cw", "0,2")):
            result = invoke("eval", trained_run, "--attack", attacks, "--eps", eps, "--n", "130", "--batch-size",
                            batch, "--device", "cpu", "--quiet", "--out", out)  # fmt: skip
            assert result.exit_code == 0, result.output
        results[batch] = outcomes(out).sort_values(KEY + ["example"]).reset_index(drop=True)
    a, b = results[500], results[37]
    pd.testing.assert_frame_equal(a, b)
    assert set(a["attack"]) == {"jacobian_norm", "jacobian_norm_normalized", "fgsm", "pgd", "noise", "cw", "worst_case"}


def test_an_old_csv_still_reads_resumes_and_reports(tmp_path, study):
    old = read_results(study)
    old = old[~old["attack"].isin(["worst_case"])][LEGACY_COLUMNS]  # what robench 0.1 wrote
    legacy = tmp_path / "legacy.csv"
    old.to_csv(legacy, index=False)
    back = read_results(legacy)
    assert len(back) == len(old) and set(back["protocol"]) == {1} and set(back["outcomes"]) == {0}
    assert outcomes(legacy).empty
    report = invoke("report", legacy, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    # resuming into it keeps the old rows (protocol 1, no outcomes) and adds the new protocol's
    model = old["model"].iloc[0]
    result = invoke("eval", model, "--attack", "fgsm", "--eps", "0,0.1", "--n", "120", "--device", "cpu",
                    "--quiet", "--out", legacy)  # fmt: skip
    assert result.exit_code == 0, result.output
    now = pd.read_csv(legacy)
    assert (now["protocol"] == 1).sum() == len(old) and (now["protocol"] == PROTOCOL).sum() == 4  # ||J|| in 2 units + 2 eps
    assert len(outcomes(legacy)) == 4 * 120


def test_merge_combines_rows_and_outcomes_once(tmp_path, trained_run, jr_run):
    a, b, merged = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "merged.csv"
    args = ["--attack", "fgsm,pgd", "--eps", "0,0.1", "--n", "100", "--device", "cpu", "--quiet"]
    assert invoke("eval", trained_run, *args, "--out", a).exit_code == 0
    assert invoke("eval", jr_run, *args, "--out", b).exit_code == 0
    result = invoke("merge", a, b, "--out", merged)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(merged, dtype={"model_hash": str, "spec_hash": str})
    parts = pd.concat([pd.read_csv(p, dtype={"model_hash": str, "spec_hash": str}) for p in (a, b)])
    cols = [c for c in parts.columns if c not in ("flags",)]
    key = lambda df: df.sort_values(KEY)[cols].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(rows), key(parts))
    assert len(outcomes(merged)) == len(outcomes(a)) + len(outcomes(b))
    again = invoke("merge", a, b, "--out", merged)
    assert again.exit_code == 0 and "0 new row(s)" in again.output
    assert len(pd.read_csv(merged)) == len(rows)
    missing = invoke("merge", tmp_path / "nope.csv", "--out", merged)
    assert missing.exit_code == 1 and "not found" in missing.output


def test_checks_on_real_rows(tmp_path, trained_run):
    """Silent for a normal model at FGSM eps 0.5; firing for a model that predicts one class always."""
    from safetensors.torch import save_file

    from robench.checkpoint import load

    out = tmp_path / "r.csv"
    result = invoke("eval", trained_run, "--attack", "fgsm,pgd", "--eps", "0,0.1,0.5", "--n", "100",
                    "--device", "cpu", "--quiet", "--out", out)  # fmt: skip
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert (pd.read_csv(out, dtype={"flags": str})["flags"].fillna("") == "").all()
    model, _ = load(trained_run)
    state = {k: v.clone() * 0 for k, v in model.state_dict().items() if not k.startswith("normalize")}
    last_bias = [k for k in state if k.endswith("bias")][-1]
    state[last_bias][3] = 5.0  # every input: class 3
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "const.safetensors")
    result = invoke("eval", "--arch", "mlp", "--weights", tmp_path / "const.safetensors", "--attack", "fgsm,pgd",
                    "--eps", "0,0.1,0.5", "--n", "100", "--device", "cpu", "--quiet", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    const = rows[rows["model"].str.startswith("mlp:") & (rows["epsilon"] > 0)]
    assert len(const) and const["flags"].str.contains("one_class_for_every_input").all()
    assert "one_class_for_every_input" in result.output


def test_a_smaller_evaluation_reads_the_first_outcomes_of_larger_ones(tmp_path, trained_run):
    """PGD on 120 images and FGSM on 60: the worst case on the first 60 combines both, and equals the
    AND of FGSM with PGD's first 60 outcomes (which do not depend on how many images PGD ran on)."""
    out, alone = tmp_path / "mixed.csv", tmp_path / "alone.csv"
    common = ["--eps", "0,0.1", "--device", "cpu", "--quiet"]
    assert invoke("eval", trained_run, "--attack", "pgd", "--n", "120", *common, "--out", out).exit_code == 0
    assert invoke("eval", trained_run, "--attack", "fgsm", "--n", "60", *common, "--out", out).exit_code == 0
    assert invoke("eval", trained_run, "--attack", "pgd", "--n", "60", *common, "--out", alone).exit_code == 0
    per = outcomes(out)
    pgd120 = per[(per["attack"] == "pgd") & (per["epsilon"] == 0.1)].sort_values("example")["robust"].to_numpy()
    pgd60 = outcomes(alone).query("attack == 'pgd' and epsilon == 0.1").sort_values("example")["robust"].to_numpy()
    np.testing.assert_array_equal(pgd120[:60], pgd60)
    fgsm = per[(per["attack"] == "fgsm") & (per["epsilon"] == 0.1)].sort_values("example")["robust"].to_numpy()
    worst = read_results(out).query("attack == 'worst_case' and epsilon == 0.1")
    assert worst["n"].tolist() == [60]
    assert worst["accuracy"].item() == pytest.approx(((fgsm >= 1) & (pgd60 >= 1)).mean())


def test_a_corrupt_database_gets_one_line_and_is_left_as_it_was(tmp_path, trained_run):
    import hashlib

    db = tmp_path / "r.db"
    db.write_bytes(b"not sqlite at all\n" * 10)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for args in (["eval", trained_run, "--attack", "fgsm", "--eps", "0,0.1", "--n", "20", "--device", "cpu",
                  "--quiet", "--out", tmp_path / "r.csv"], ["report", tmp_path / "r.csv", "--out", tmp_path / "rep"],
                 ["compare", "a", "b", "--results", tmp_path / "r.csv"]):  # fmt: skip
        result = invoke(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and "is not a robench results database" in lines[0], args
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_schema_1_database_migrates_and_its_csv_gains_the_model_checks_column(tmp_path, trained_run):
    """A store written before model_checks (schema 1): opened, migrated, its CSV rewritten with the new column
    aligned, its rows unchanged; new rows carry what robench measured on the model."""
    import csv as csv_module
    import io
    import sqlite3

    from robench.results import COLUMNS, ResultsStore

    out = tmp_path / "r.csv"
    assert invoke("eval", str(trained_run), "--attack", "fgsm", "--eps", "0,0.1", "--n", "20", "--device", "cpu",
                  "--quiet", "--out", str(out)).exit_code == 0  # fmt: skip
    before = read_results(out)
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("ALTER TABLE rows DROP COLUMN model_checks")
    conn.execute("ALTER TABLE rows DROP COLUMN attack_failure")
    old_fields = [c for c in COLUMNS if c not in ("outcomes", "model_checks", "attack_failure")]
    for row_id, *values in conn.execute(f"SELECT r.id, {', '.join('r.' + c for c in old_fields)}, "
                                        "COALESCE(o.count, 0) FROM rows r LEFT JOIN outcomes o ON o.row_id = r.id").fetchall():  # fmt: skip
        line = io.StringIO()
        csv_module.writer(line, lineterminator="\n").writerow(values)
        conn.execute("UPDATE rows SET csv_line = ? WHERE id = ?", (line.getvalue(), row_id))
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with ResultsStore(out):
        pass
    after = read_results(out)
    assert list(after.columns[: len(COLUMNS)]) == COLUMNS and (after["model_checks"] == "").all()
    assert (after["attack_failure"] == "").all()
    new_columns = ["model_checks", "attack_failure"]
    pd.testing.assert_frame_equal(after.drop(columns=new_columns), before.drop(columns=new_columns))
    assert invoke("eval", str(trained_run), "--attack", "pgd", "--eps", "0,0.1", "--n", "20", "--device", "cpu",
                  "--quiet", "--out", str(out)).exit_code == 0  # fmt: skip
    new = read_results(out)
    assert new[new["attack"] == "pgd"]["model_checks"].str.contains('"randomized":false').all()
