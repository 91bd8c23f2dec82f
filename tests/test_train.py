"""`robench train` and run directories: what is written, how it is reloaded, resumed and refused."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench import checkpoint
from robench.cli import cli
from robench.errors import RobenchError
from robench.metrics import clean_accuracy, mean_jacobian_norm
from robench.train import TrainConfig, learning_rate, train

SMALL = ["--train-subset", "1000", "--test-subset", "300", "--norm-samples", "50", "--device", "cpu"]


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_train_writes_a_self_describing_run(tmp_path, mnist_test_small):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "mlp", "--epochs", "2", "--lr", "0.05", *SMALL, "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "meta.json", "log.csv", "optimizer.pt"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns[:7]) == [
        "epoch", "supervised_loss", "jr_term", "train_accuracy", "test_accuracy", "test_jacobian_norm", "lr",
    ]  # fmt: skip
    assert log["epoch"].tolist() == [1, 2]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["model"] == "mlp" and meta["config"]["seed"] == 0
    assert meta["finished"] and meta["epochs_done"] == 2 and meta["defense"] == "none"
    assert "torch" in meta["versions"]
    # The checkpoint alone rebuilds the model and reproduces the logged metrics.
    model, meta2 = checkpoint.load(out)
    images, labels = mnist_test_small
    assert clean_accuracy(model, images[:300], labels[:300]) == pytest.approx(log["test_accuracy"].iloc[-1], abs=1e-9)
    assert mean_jacobian_norm(model, images[:50]) == pytest.approx(log["test_jacobian_norm"].iloc[-1], rel=1e-5)
    assert meta2 == meta


def test_jacobian_regularization_shrinks_the_jacobian(tmp_path):
    common = dict(model="mlp", epochs=2, lr=0.05, train_subset=3000, test_subset=300, norm_samples=200, device="cpu")
    plain = train(TrainConfig(**common), tmp_path / "plain", show_progress=False)
    jr = train(TrainConfig(**common, jr=0.1), tmp_path / "jr", show_progress=False)
    assert jr["defense"] == "jr=0.1"
    assert jr["metrics"]["test_jacobian_norm"] < 0.6 * plain["metrics"]["test_jacobian_norm"]
    assert jr["metrics"]["test_accuracy"] > 0.8
    log = pd.read_csv(tmp_path / "jr" / "log.csv")
    assert (log["jr_term"] > 0).all()


def test_existing_run_is_refused_and_kept(tmp_path, trained_run):
    before = {p.name: p.read_bytes() for p in trained_run.iterdir()}
    result = CliRunner().invoke(cli, ["train", "--model", "mlp", *SMALL, "--out", str(trained_run), "--quiet"])
    assert result.exit_code != 0
    assert "already holds a run" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in trained_run.iterdir()} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jr", "-1"], "--jr must be >= 0"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--model", "vgg99"], "unknown model 'vgg99'"),
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--adv-train", "fgsm"], "--adv-train needs --adv-eps > 0"),
        (["--resume", "--force"], "exclude each other"),
    ],
)
def test_bad_training_flags_get_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["train", *SMALL, "--epochs", "1", *args, "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_unwritable_output_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["train", *SMALL, "--epochs", "1", "--out", str(blocker / "run"), "--quiet"])
    assert result.exit_code != 0
    assert "cannot write to" in result.output and "Traceback" not in result.output


def test_corrupt_and_missing_checkpoints_are_refused(tmp_path, trained_run):
    with pytest.raises(RobenchError, match="meta.json is missing"):
        checkpoint.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "model.safetensors"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RobenchError, match="corrupt"):
        checkpoint.load(broken)
    (broken / "meta.json").write_text("{not json")
    with pytest.raises(RobenchError, match="not valid JSON"):
        checkpoint.load(broken)


def test_wrong_architecture_is_refused(tmp_path, trained_run):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "model.safetensors").write_bytes((trained_run / "model.safetensors").read_bytes())
    meta = json.loads((trained_run / "meta.json").read_text())
    meta["config"]["model"] = "lenet"
    (wrong / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RobenchError, match="do not fit the architecture"):
        checkpoint.load(wrong)


def test_quench_schedule():
    config = TrainConfig(lr=0.1, epochs=3)
    assert [learning_rate(config, s, 300) for s in (0, 99, 100, 199, 200, 299)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    assert learning_rate(TrainConfig(schedule="constant"), 299, 300) == 0.1


def test_adversarial_training_runs_and_is_labelled(tmp_path):
    config = TrainConfig(model="mlp", epochs=1, lr=0.05, train_subset=1000, test_subset=200, norm_samples=20,
                         device="cpu", adv_train="fgsm", adv_eps=0.1, jr=0.01)  # fmt: skip
    meta = train(config, tmp_path / "adv", show_progress=False)
    assert meta["defense"] == "adv=fgsm@0.1+jr=0.01"
    assert meta["metrics"]["test_accuracy"] > 0.5


def _train_cmd(out, epochs):
    return [sys.executable, "-m", "robench", "train", "--model", "lenet", "--jr", "0.01", "--dropout", "0.5",
            "--epochs", str(epochs), "--train-subset", "1500", "--test-subset", "100", "--norm-samples", "20",
            "--device", "cpu", "--quiet", "--out", str(out)]  # fmt: skip


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a run after its second epoch, --resume it, and compare with an uninterrupted run."""
    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet", "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(full, 4), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(killed, 4), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        meta_path = killed / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text())["epochs_done"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = json.loads((killed / "meta.json").read_text())
    assert not meta["finished"], "the run finished before it could be killed; the test proved nothing"
    refused = subprocess.run(_train_cmd(killed, 4), env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "already holds a run" in refused.stderr
    subprocess.run([*_train_cmd(killed, 4), "--resume"], check=True, env=env, capture_output=True)
    weights_full, _ = checkpoint.read_weights(full)
    weights_resumed, epoch = checkpoint.read_weights(killed)
    assert epoch == 4
    for key, value in weights_full.items():
        torch.testing.assert_close(weights_resumed[key], value, rtol=0, atol=0)
    log_full, log_resumed = pd.read_csv(full / "log.csv"), pd.read_csv(killed / "log.csv")
    assert log_resumed["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_series_equal(log_full["test_accuracy"], log_resumed["test_accuracy"])


def test_resume_with_other_settings_is_refused(tmp_path, trained_run):
    result = CliRunner().invoke(cli, ["train", "--model", "mlp", "--jr", "0.5", *SMALL, "--resume",
                                      "--out", str(trained_run), "--quiet"])  # fmt: skip
    assert result.exit_code != 0 and "different settings" in result.output


def test_show_prints_runs_side_by_side(trained_run):
    result = run_cli("show", str(trained_run))
    assert result.exit_code == 0
    assert "mlp" in result.output and "none" in result.output


def test_compile_with_jr_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from robench.cli import cli

    result = CliRunner().invoke(cli, ["train", "--model", "mlp", "--jr", "0.01", "--compile", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--compile cannot be combined with --jr" in result.output and not (tmp_path / "r").exists()


def test_runtime_options_do_not_block_resume(tmp_path):
    """--no-tf32 / --compile / --device change speed, not the recipe: a run resumes across them."""
    base = TrainConfig(model="mlp", epochs=2, train_subset=200, test_subset=50, norm_samples=10, device="cpu")
    train(dataclasses.replace(base, epochs=2), tmp_path, show_progress=False)
    meta = train(dataclasses.replace(base, tf32=False), tmp_path, resume=True, show_progress=False)
    assert meta["epochs_done"] == 2
    with pytest.raises(RobenchError, match="different settings"):
        train(dataclasses.replace(base, lr=0.5), tmp_path, resume=True, show_progress=False)


def test_tf32_flag_sets_the_cuda_backends():
    import torch

    from robench.devices import configure_tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        configure_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """--compile (torch.compile of the model) trains to the same test accuracy as eager, within noise."""
    base = TrainConfig(model="mlp", epochs=1, train_subset=1000, test_subset=500, norm_samples=10, device="cpu")
    eager = train(base, tmp_path / "eager", show_progress=False)
    compiled = train(dataclasses.replace(base, compile=True), tmp_path / "compiled", show_progress=False)
    assert abs(eager["metrics"]["test_accuracy"] - compiled["metrics"]["test_accuracy"]) < 0.02


class _Killed(BaseException):
    """Stands for SIGKILL at one point of `save_epoch`: nothing after it runs, nothing cleans up."""


@pytest.mark.parametrize("kill_before", ["save_optimizer", "save_weights", "save_meta"])
def test_a_kill_at_any_point_of_a_save_resumes_to_a_whole_log(tmp_path, monkeypatch, kill_before):
    """Each step of the epoch-2 save is cut in turn; --resume must give log epochs 1, 2, 3 and the
    uninterrupted run's weights (the kill -9 test hits these points only by chance)."""
    config = TrainConfig(model="mlp", epochs=3, lr=0.05, train_subset=300, test_subset=50, norm_samples=5, device="cpu")
    train(config, tmp_path / "full", show_progress=False)
    real = getattr(checkpoint, kill_before)

    def cut(run_dir, *args, **kwargs):
        if (args and isinstance(args[-1], int) and args[-1] == 2) or (args and isinstance(args[0], dict) and args[0].get("epochs_done") == 2):
            raise _Killed
        return real(run_dir, *args, **kwargs)

    monkeypatch.setattr(checkpoint, kill_before, cut)
    with pytest.raises(_Killed):
        train(config, tmp_path / "cut", show_progress=False)
    monkeypatch.setattr(checkpoint, kill_before, real)
    train(config, tmp_path / "cut", resume=True, show_progress=False)
    assert pd.read_csv(tmp_path / "cut" / "log.csv")["epoch"].tolist() == [1, 2, 3]
    full, _ = checkpoint.read_weights(tmp_path / "full")
    resumed, epoch = checkpoint.read_weights(tmp_path / "cut")
    assert epoch == 3
    for key, value in full.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)
