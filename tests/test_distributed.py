"""Two real processes (gloo on CPU): sharded eval equals one process, DDP training matches it, bad input never hangs.

Ranks are started as subprocesses with torchrun's environment variables (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR/PORT), or with torchrun itself, one thread each; every launch has a
deadline, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench import checkpoint
from robench.cli import cli
from robench.distributed import batch_shard
from robench.results import COLUMNS, outcomes

DEADLINE_S = 120
EVAL = ["--attack", "fgsm,pgd,cw", "--eps", "0,0.1", "--n", "110", "--batch-size", "25", "--device", "cpu",
        "--quiet"]  # fmt: skip
TRAIN = ["--model", "mlp", "--jr", "0.01", "--exact", "--epochs", "2", "--lr", "0.05", "--batch-size", "99",
         "--train-subset", "1000", "--test-subset", "1000", "--norm-samples", "100", "--device", "cpu",
         "--quiet"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "GIT_PYTHON_REFRESH": "quiet", "OMP_NUM_THREADS": "1", "ROBENCH_DIST_TIMEOUT": "60", **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], *, ranks: int = 2, world_size: int = 2, **env: str) -> list[tuple[int, str, str]]:
    """Run `python -m robench ARGS` as ranks 0 .. ranks-1 of `world_size`; (returncode, stdout, stderr) each.

    Output goes to files, not pipes: a rank blocked on a full pipe would stall the others. A port
    taken between choosing and binding it (other jobs share this machine) is retried.
    """
    for _ in range(3):
        results = _launch_once([sys.executable, "-m", "robench", *map(str, args)], ranks, world_size, env)
        if not any("EADDRINUSE" in err for _, _, err in results):
            return results
    return results


def _launch_once(command: list[str], ranks: int, world_size: int, env: dict[str, str]):
    common = _env(WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(_free_port()), **env)  # fmt: skip
    with tempfile.TemporaryDirectory() as logs:
        outs = [(open(f"{logs}/{r}.out", "w+"), open(f"{logs}/{r}.err", "w+")) for r in range(ranks)]
        procs = [subprocess.Popen(command, env={**common, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=out, stderr=err, text=True) for r, (out, err) in enumerate(outs)]  # fmt: skip
        deadline = time.monotonic() + DEADLINE_S
        try:
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command)} hung for {DEADLINE_S} s")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        results = []
        for proc, (out, err) in zip(procs, outs):
            out.seek(0)
            err.seek(0)
            results.append((proc.returncode, out.read(), err.read()))
            out.close()
            err.close()
    return results


@pytest.fixture
def one_thread():
    """In-process reference runs on one thread, like each rank: two threads on a busy 2-core box crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "robench"]
    return subprocess.run([*cmd, *map(str, args)], env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)


@pytest.mark.parametrize("n, batch, size", [(230, 50, 2), (200, 50, 2), (7, 1, 3), (1000, 500, 2), (501, 500, 2)])
def test_shards_are_contiguous_whole_batches(n, batch, size):
    shards = [batch_shard(n, batch, r, size) for r in range(size)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
    assert all(start % batch == 0 and start < stop for start, stop in shards)
    counts = [-(-(stop - start) // batch) for start, stop in shards]
    assert max(counts) - min(counts) <= 1


def _comparable(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in COLUMNS if c != "timestamp"]
    return rows.sort_values(["attack", "norm", "epsilon"])[cols].reset_index(drop=True)


def test_sharded_eval_writes_the_rows_and_outcomes_of_one_process(tmp_path, trained_run, one_thread):
    """FGSM, PGD (random starts) and CW on 2 ranks; the store already holds one row, which is kept."""
    single, sharded = tmp_path / "single.csv", tmp_path / "sharded.csv"
    result = CliRunner().invoke(cli, ["eval", str(trained_run), *EVAL, "--out", str(single)])
    assert result.exit_code == 0, result.output
    reference = pd.read_csv(single)
    # Resume: a row already in the store must be kept, not recomputed.
    first = CliRunner().invoke(cli, ["eval", str(trained_run), *EVAL[:-1], "--attack", "pgd", "--eps", "0.1",
                                     "--quiet", "--out", str(sharded)])  # fmt: skip
    assert first.exit_code == 0, first.output
    stamp = pd.read_csv(sharded).set_index("attack").loc["pgd", "timestamp"]
    # "--" keeps torchrun's own parser off robench's options (it would read --n as ambiguous).
    done = torchrun(["--", "eval", trained_run, *EVAL, "--out", sharded])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pgd (linf, n=110)") == 1  # rank 0 alone prints the tables
    rows = pd.read_csv(sharded)
    assert len(rows) == len(reference) == 2 + 3 * 2 + 2  # clean/||J|| in 2 units, 3 attacks x 2 eps, worst case L∞ x 2 eps
    assert rows.loc[(rows["attack"] == "pgd") & (rows["epsilon"] == 0.1), "timestamp"].item() == stamp
    pd.testing.assert_frame_equal(_comparable(rows), _comparable(reference))
    key = ["attack", "epsilon", "example"]
    pd.testing.assert_frame_equal(outcomes(sharded).sort_values(key).reset_index(drop=True),
                                  outcomes(single).sort_values(key).reset_index(drop=True))  # fmt: skip
    accuracy = rows.set_index(["attack", "epsilon"])["accuracy"]
    assert accuracy["pgd", 0.1] < accuracy["pgd", 0.0] - 0.2  # the attack did bite


def test_any_n_shards_even_below_one_batch(tmp_path, trained_run, one_thread):
    """150 images at the default --batch-size 500 on 2 processes: one chunk of 100 and one of 50."""
    args = ["--attack", "pgd,cw", "--eps", "0,0.1,1", "--n", "150", "--device", "cpu", "--quiet"]
    single, sharded = tmp_path / "single.csv", tmp_path / "sharded.csv"
    result = CliRunner().invoke(cli, ["eval", str(trained_run), *args, "--out", str(single)])
    assert result.exit_code == 0, result.output
    done = torchrun(["--", "eval", trained_run, *args, "--out", sharded])
    assert done.returncode == 0, done.stderr[-3000:]
    pd.testing.assert_frame_equal(_comparable(pd.read_csv(sharded)), _comparable(pd.read_csv(single)))
    key = ["attack", "epsilon", "example"]
    assert outcomes(sharded).sort_values(key)["robust"].tolist() == outcomes(single).sort_values(key)["robust"].tolist()


def test_ddp_training_matches_one_process_and_resume_is_a_no_op(tmp_path, one_thread):
    """Exact JR (no random projections), batch 99 (chunks of 50 and 49): the same math as one process."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    result = CliRunner().invoke(cli, ["train", *TRAIN, "--out", str(single)])
    assert result.exit_code == 0, result.output
    done = torchrun(["train", *TRAIN, "--out", ddp])
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in ddp.iterdir()) == sorted(checkpoint.RUN_FILES)
    meta = json.loads((ddp / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["finished"] and meta["epochs_done"] == 2
    log, ref_log = pd.read_csv(ddp / "log.csv"), pd.read_csv(single / "log.csv")
    assert abs(log["test_accuracy"].iloc[-1] - ref_log["test_accuracy"].iloc[-1]) < 0.03
    # Same batches, same batch-mean gradients: only the order of float additions differs.
    pd.testing.assert_series_equal(log["supervised_loss"], ref_log["supervised_loss"], rtol=1e-4)
    weights, _ = checkpoint.read_weights(ddp)
    ref_weights, _ = checkpoint.read_weights(single)
    for key, value in ref_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-4)
    before = {p.name: p.read_bytes() for p in ddp.iterdir()}
    ranks = launch(["train", *TRAIN, "--out", ddp, "--resume"])
    assert [rc for rc, _, _ in ranks] == [0, 0], ranks
    assert {p.name: p.read_bytes() for p in ddp.iterdir()} == before


def test_jr_with_dropout_trains_under_ddp(tmp_path):
    """Random projections and dropout, seeded per rank, through DDP's double backward: no reducer errors."""
    out = tmp_path / "jr"
    args = ["train", "--model", "mlp", "--jr", "0.05", "--dropout", "0.2", "--epochs", "1", "--train-subset", "600",
            "--test-subset", "200", "--norm-samples", "50", "--device", "cpu", "--quiet", "--out", out]  # fmt: skip
    (rc0, out0, err0), (rc1, out1, _) = launch(args)
    assert rc0 == 0 and rc1 == 0, err0
    assert "test accuracy" in out0 and out1 == ""
    log = pd.read_csv(out / "log.csv")
    assert log["jr_term"].iloc[0] > 0 and log["test_accuracy"].iloc[0] > 0.2  # chance: 0.1


def _bad_cases(tmp_path, trained_run):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    return [
        (["eval", trained_run, "--attack", "nosuch", "--n", "50", "--device", "cpu"], "unknown attack 'nosuch'"),
        (["eval", trained_run, "--attack", "fgsm", "--n", "50", "--device", "cpu", "--out", blocker / "r.csv"],
         "cannot write results"),
        (["train", "--model", "mlp", "--device", "cpu", "--out", trained_run], "already holds a run"),
    ]  # fmt: skip


def test_bad_input_stops_every_rank_with_the_same_line(tmp_path, trained_run):
    before = {p.name: p.read_bytes() for p in trained_run.iterdir()}
    for args, message in _bad_cases(tmp_path, trained_run):
        ranks = launch([*args, "--quiet"])
        errors = []
        for rc, out, err in ranks:
            assert rc == 1 and out == "", (args, rc, out, err)
            assert "Traceback" not in err, err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, err)
            errors.append(lines[0])
        assert errors[0] == errors[1]
    assert {p.name: p.read_bytes() for p in trained_run.iterdir()} == before


def test_a_missing_rank_times_out_with_one_line(trained_run):
    """Rank 1 never starts: rank 0 gives up after ROBENCH_DIST_TIMEOUT instead of waiting forever."""
    ((rc, _, err),) = launch(["eval", trained_run, "--attack", "fgsm", "--n", "50", "--device", "cpu", "--quiet"],
                             ranks=1, ROBENCH_DIST_TIMEOUT="3")  # fmt: skip
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: rank 0: cannot join the other processes"), err
