"""Hostile input and faults, through the CLI as a user runs it: nothing lost, nothing escapes.

Every case runs a robench command against a copy of a small real workspace (a trained run, a results
CSV and its database, a weights file) and asserts the README's promise: a non-zero exit, exactly one
`Error:` line and no traceback, and every file that existed before byte-identical afterwards. Cases
that need real processes (two writers on one run directory, kill -9, a FIFO that would block, a full
or read-only file system) run `python -m robench` as a subprocess with a timeout.

The categories follow issue 13: concurrent writers, --force validating first, paths and markup from
data, divergence, operating-system errors, corrupt contents, numbers out of range.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robench.cli import cli

TRAIN = ["train", "--model", "mlp", "--epochs", "1", "--train-subset", "500", "--test-subset", "200",
         "--norm-samples", "50", "--quiet"]  # fmt: skip
ENV = {**os.environ, "GIT_PYTHON_REFRESH": "quiet", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def invoke(args: list[str], cwd: Path):
    """Run the CLI in this process (fast), from `cwd`."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner(env={"COLUMNS": "400"}).invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)


def run_process(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m robench ARGS` as its own process; a hang fails the test instead of blocking it."""
    return subprocess.run([sys.executable, "-m", "robench", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (FIFOs and sockets are listed, not opened)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.exists():
            continue
        if path.is_file():
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not path.is_dir():
            found[str(path.relative_to(root))] = "special"
    return found


def assert_refused(exit_code: int, stdout: str, stderr: str, message: str, before: dict, root: Path) -> None:
    """Non-zero exit, one `Error:` line naming the problem, no traceback, old files unchanged."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code not in (0, None), (stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert message in lines[0], lines[0]
    after = snapshot(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or lost: {changed}"


def assert_cli_refuses(args: list[str], message: str, root: Path) -> None:
    before = snapshot(root)
    result = invoke(args, root)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught error
    assert_refused(result.exit_code, result.stdout, result.stderr, message, before, root)


def assert_process_refuses(args: list[str], message: str, root: Path, timeout: float = 120) -> None:
    before = snapshot(root)
    done = run_process(args, root, timeout=timeout)
    assert_refused(done.returncode, done.stdout, done.stderr, message, before, root)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A workspace made by the CLI: runs/good (1 epoch), results/mnist.csv + .db, weights.safetensors."""
    root = tmp_path_factory.mktemp("pristine")
    for args in (
        TRAIN + ["--out", "runs/good"],
        ["eval", "runs/good", "--attack", "noise,fgsm", "--eps", "0,0.1", "--n", "40", "--out", "results/mnist.csv",
         "--quiet"],
    ):  # fmt: skip
        result = invoke(args, root)
        assert result.exit_code == 0, result.output
    shutil.copy(root / "runs/good/model.safetensors", root / "weights.safetensors")
    return root


@pytest.fixture
def ws(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the workspace for one case."""
    target = tmp_path / "ws"
    shutil.copytree(pristine, target)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def make_unfinished(run: Path) -> None:
    """Turn the finished 1-epoch run into epoch 1 of a 2-epoch one (as if stopped after epoch 1)."""
    def change(meta):
        meta["config"]["epochs"] = 2
        meta["finished"] = False

    edit_json(run / "meta.json", change)


RESUME_2 = ["train", "--model", "mlp", "--epochs", "2", "--train-subset", "500", "--test-subset", "200",
            "--norm-samples", "50", "--quiet", "--resume", "--out", "runs/good"]  # fmt: skip


# ---- 1. two writers on one run directory --------------------------------------------------------------


def test_second_training_into_a_busy_run_directory_is_refused(ws: Path):
    """Two real processes: the second refuses with one line while the first writes (a plain second run,
    one with other settings, a --resume, a --force), and the directory holds the first run only."""
    first = subprocess.Popen(
        [sys.executable, "-m", "robench", "train", "--model", "mlp", "--epochs", "5000", "--train-subset", "500",
         "--test-subset", "100", "--norm-samples", "10", "--quiet", "--out", "runs/busy"],
        cwd=ws, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal delivers it: a shell's background job (a CI runner's, say) starts its children
        # with SIGINT ignored, and Python then never turns it into a KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (ws / "runs/busy/meta.json").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        for extra in ([], ["--l2", "0.0005"], ["--resume"], ["--force"]):
            done = run_process(["train", "--model", "mlp", "--epochs", "5000", "--train-subset", "500", "--test-subset",
                                "100", "--norm-samples", "10", "--quiet", "--out", "runs/busy", *extra], ws)  # fmt: skip
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, (extra, done.stderr)
            assert lines[0].startswith("Error: runs/busy is being written by another robench process"), lines
            assert "(pid" not in lines[0] or f"(pid {first.pid})" in lines[0]  # the pid, where /proc/locks tells
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: the first run stops after saving what it finished
        try:
            out, err = first.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            first.kill()  # never leave a 5000-epoch run behind to slow every later test
            first.communicate()
            raise
    assert first.returncode == 130, err
    meta = json.loads((ws / "runs/busy/meta.json").read_text())
    assert meta["config"]["l2"] == 0.0 and 1 <= meta["epochs_done"] < 5000 and not meta["finished"]


def test_kill_minus_9_leaves_no_stale_lock_and_the_run_resumes(ws: Path):
    """kill -9 in the middle of training (saves every few ms): the kernel drops the lock, the next
    --resume continues from the last complete epoch and finishes."""
    args = ["train", "--model", "mlp", "--epochs", "100", "--train-subset", "300", "--test-subset", "50",
            "--norm-samples", "5", "--quiet", "--out", "runs/killed"]  # fmt: skip
    victim = subprocess.Popen([sys.executable, "-m", "robench", *args], cwd=ws, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (ws / "runs/killed/meta.json").exists():
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = json.loads((ws / "runs/killed/meta.json").read_text())["epochs_done"]
    assert done_before < 100
    done = run_process([*args, "--resume"], ws)
    assert done.returncode == 0, done.stderr
    meta = json.loads((ws / "runs/killed/meta.json").read_text())
    assert meta["finished"] and meta["epochs_done"] == 100
    import pandas as pd

    assert list(pd.read_csv(ws / "runs/killed/log.csv")["epoch"]) == list(range(1, 101))


def test_second_report_into_a_busy_directory_is_refused(ws: Path):
    from robench.locking import exclusive

    with exclusive(ws / "rep"):
        assert_process_refuses(["report", "results/mnist.csv", "--out", "rep"], "being written by another", ws)


# ---- 2. --force checks everything before it touches the old run ---------------------------------------

FORCE_BAD = {
    "unknown model": (["--model", "bogus"], "unknown model 'bogus'"),
    "unknown dataset": (["--dataset", "bogus"], "unknown dataset 'bogus'"),
    "zero subset": (["--train-subset", "0"], "--train-subset"),
    "negative test subset": (["--test-subset", "-3"], "--test-subset"),
    "huge seed": (["--seed", str(10**18)], "--seed must be an integer in [0, 2^31)"),
    "negative seed": (["--seed", "-1"], "--seed"),
    "lr inf": (["--lr", "inf"], "--lr must be > 0 and finite"),
    "lr nan": (["--lr", "nan"], "--lr must be > 0 and finite"),
    "lr zero": (["--lr", "0"], "--lr"),
    "jr inf": (["--jr", "inf"], "--jr must be >= 0 and finite"),
    "jr negative": (["--jr", "-1"], "--jr"),
    "l2 inf": (["--l2", "inf"], "--l2"),
    "momentum nan": (["--momentum", "nan"], "--momentum"),
    "dropout nan": (["--dropout", "nan"], "--dropout"),
    "adv eps out of the box": (["--adv-train", "fgsm", "--adv-eps", "3"], "--adv-eps"),
    "warmup inf": (["--warmup-epochs", "inf"], "--warmup-epochs"),
    "epochs zero": (["--epochs", "0"], "--epochs"),
    "batch size zero": (["--batch-size", "0"], "--batch-size"),
    "data root is a file": (["--data-root", "weights.safetensors"], "is not a directory"),
    "cifar without data": (["--dataset", "cifar10", "--data-root", "runs"], "CIFAR-10"),
    "diverges in its first epoch": (["--lr", "1e9"], "training diverged"),
    "jr so large it diverges": (["--jr", "1e12"], "training diverged"),
}


@pytest.mark.parametrize("case", list(FORCE_BAD), ids=list(FORCE_BAD))
def test_force_with_bad_input_leaves_the_old_run_as_it_was(ws: Path, case: str):
    extra, message = FORCE_BAD[case]
    assert_cli_refuses(TRAIN + ["--out", "runs/good", "--force", *extra], message, ws)
    assert json.loads((ws / "runs/good/meta.json").read_text())["finished"]


# ---- 3. paths and markup from data --------------------------------------------------------------------

HOSTILE_LABEL = "$\\frac{1}{0}$ $x^$ ![x](http://evil.example/a.png) <img src=https://evil.example/b.png> [bold red]boom[/] [/]"


def hostile_csv(ws: Path) -> Path:
    """The workspace's results with attack names that are paths and a defense label full of markup."""
    import pandas as pd

    df = pd.read_csv(ws / "results/mnist.csv", keep_default_na=False, na_values=[""], dtype={"model_hash": str})
    df.loc[df["attack"] == "noise", "attack"] = "../../escaped"
    df.loc[df["attack"] == "fgsm", "attack"] = str(ws / "absolute")
    df["defense"] = HOSTILE_LABEL
    path = ws / "hostile.csv"
    df.to_csv(path, index=False)
    return path


def test_report_keeps_every_file_inside_out_and_draws_labels_literally(ws: Path):
    hostile_csv(ws)
    before = snapshot(ws)
    result = invoke(["report", "hostile.csv", "--out", "rep", "--format", "html"], ws)
    assert result.exit_code == 0, result.output
    after = snapshot(ws)
    new = sorted(set(after) - set(before))
    assert new and all(name.startswith("rep/") for name in new), new
    assert not (ws.parent / "escaped.png").exists() and not (ws / "absolute.png").exists()
    assert all("/" not in name[len("rep/"):] for name in new), new
    assert "[bold red]boom[/] [/]" in result.stdout  # rich printed the label, not its markup
    page = (ws / "rep/report.html").read_text()
    assert "evil.example" in page  # the text is shown ...
    assert "<img src=https" not in page and 'src="http' not in page and 'href="http' not in page  # ... never used
    import re

    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:3]
    assert "<script" not in page.lower()


def test_markup_in_a_run_label_is_shown_literally_by_show_eval_and_cells(ws: Path):
    edit_json(ws / "runs/good/meta.json", lambda m: m.update(defense=HOSTILE_LABEL))
    shown = invoke(["show", "runs/good"], ws)
    assert shown.exit_code == 0 and "[bold red]boom[/] [/]" in shown.stdout, shown.output
    drawn = invoke(["cells", "runs/good", "--out", "cells.png", "--resolution", "5"], ws)
    assert drawn.exit_code == 0 and (ws / "cells.png").stat().st_size > 0, drawn.output
    evaluated = invoke(["eval", "runs/good", "--attack", "noise", "--eps", "0", "--n", "20", "--out", "labels.csv",
                        "--quiet"], ws)  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    report = invoke(["report", "labels.csv", "--out", "rep2"], ws)
    assert report.exit_code == 0, report.output


# ---- 4. divergence ------------------------------------------------------------------------------------


def test_divergence_stops_training_and_is_never_saved_as_finished(ws: Path):
    assert_cli_refuses(TRAIN + ["--out", "runs/diverged", "--lr", "1e9"],
                       "training diverged: the loss became non-finite", ws)  # fmt: skip
    assert not (ws / "runs/diverged/meta.json").exists()


def test_divergence_in_a_later_epoch_keeps_the_last_finite_epoch(ws: Path):
    """Weights scaled to 1e30 (finite, but the next loss is not): epoch 2 diverges, epoch 1 stays."""
    from safetensors.torch import load_file, save_file

    make_unfinished(ws / "runs/good")
    state = load_file(ws / "runs/good/model.safetensors")
    save_file({k: v * 1e30 for k, v in state.items()}, ws / "runs/good/model.safetensors",
              metadata={"robench_epoch": "1"})  # fmt: skip
    assert_cli_refuses(RESUME_2, "at epoch 2, step 1 of 5", ws)
    assert_cli_refuses(RESUME_2, "runs/good keeps epoch 1, the last finite one", ws)


def nan_weights(ws: Path) -> None:
    from safetensors.torch import load_file, save_file

    for path in (ws / "runs/good/model.safetensors", ws / "weights.safetensors"):
        state = load_file(path)
        first = next(iter(state))
        state[first] = torch.full_like(state[first], float("nan"))
        save_file(state, path, metadata={"robench_epoch": "1"})


@pytest.mark.parametrize("command", [
    ["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "r.csv"],
    ["cells", "runs/good", "--out", "c.png", "--resolution", "5"],
    ["eval", "--arch", "mlp", "--weights", "weights.safetensors", "--attack", "noise", "--n", "20", "--out", "r.csv"],
], ids=["eval-run", "cells", "eval-weights"])
def test_a_model_with_non_finite_weights_is_refused(ws: Path, command: list[str]):
    nan_weights(ws)
    assert_cli_refuses(command, "are not finite", ws)


# ---- 5. operating-system errors -----------------------------------------------------------------------


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0  # fmt: skip


@pytest.fixture
def small_disk(ws: Path):
    """A 300 kB tmpfs at ws/full, filled but for 8 kB (root only): the next large write fails."""
    where = ws / "full"
    if not _mount_tmpfs(where, "size=300k"):
        pytest.skip("needs root and tmpfs to make a full file system")
    (where / "filler").write_bytes(b"x" * (300 * 1024 - 8192))
    yield where
    subprocess.run(["umount", str(where)])


@pytest.mark.parametrize("command", [
    TRAIN + ["--out", "full/run"],
    ["eval", "runs/good", "--attack", "noise", "--eps", "0", "--n", "20", "--out", "full/r.csv", "--quiet"],
    ["report", "results/mnist.csv", "--out", "full/rep"],
    ["cells", "runs/good", "--out", "full/c.png", "--resolution", "31"],
], ids=["train", "eval", "report", "cells"])
def test_a_full_disk_gives_one_line(ws: Path, small_disk: Path, command: list[str]):
    before = snapshot(ws)
    done = run_process(command, ws)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "space" in lines[0] or "full" in lines[0], lines[0]
    after = snapshot(ws)
    assert all(after.get(k) == v for k, v in before.items())


@pytest.fixture
def read_only(ws: Path):
    where = ws / "ro"
    if not _mount_tmpfs(where, "size=1m,ro"):
        pytest.skip("needs root and tmpfs to make a read-only file system")
    yield where
    subprocess.run(["umount", str(where)])


@pytest.mark.parametrize("command", [
    TRAIN + ["--out", "ro/run"],
    ["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "ro/r.csv"],
    ["report", "results/mnist.csv", "--out", "ro/rep"],
], ids=["train", "eval", "report"])
def test_a_read_only_file_system_gives_one_line(ws: Path, read_only: Path, command: list[str]):
    assert_process_refuses(command, "Read-only file system", ws)


def test_too_long_a_name_gives_one_line(ws: Path):
    assert_cli_refuses(TRAIN + ["--out", "x" * 300], "File name too long", ws)
    assert_cli_refuses(["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "y" * 300 + ".csv"],
                       "File name too long", ws)  # fmt: skip


FIFO_CASES = {
    "eval --out": ("r.csv", ["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "r.csv"], "FIFO"),
    "eval --out db": ("r.db", ["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "r.csv"], "FIFO"),
    "report input": ("in.csv", ["report", "in.csv", "--out", "rep"], "FIFO"),
    "report output": ("rep/summary.csv", ["report", "results/mnist.csv", "--out", "rep"], "FIFO"),
    "weights": ("w.safetensors", ["eval", "--arch", "mlp", "--weights", "w.safetensors", "--n", "20"], "FIFO"),
    "weights pth": ("w.pth", ["eval", "--arch", "mlp", "--weights", "w.pth", "--n", "20"], "FIFO"),
    "run meta.json": ("runs/good/meta.json", ["eval", "runs/good", "--n", "20", "--out", "r.csv"], "FIFO"),
    "run weights": ("runs/good/model.safetensors", ["eval", "runs/good", "--n", "20", "--out", "r.csv"], "FIFO"),
    "train into a run with a FIFO log": ("runs/fifo/log.csv", TRAIN + ["--out", "runs/fifo"], "FIFO"),
    "train --out is a FIFO": ("pipe", TRAIN + ["--out", "pipe"], "pipe"),
    "cells --out": ("c.png", ["cells", "runs/good", "--out", "c.png", "--resolution", "5"], "FIFO"),
    "image in an image folder": ("imgs/val/a/x.png", ["eval", "--arch", "mobilenet_v3_small", "--weights", "mobile.pth",
                                 "--dataset", "imagenet", "--data-root", "imgs", "--n", "2"], "FIFO"),  # fmt: skip
}


@pytest.mark.parametrize("case", list(FIFO_CASES), ids=list(FIFO_CASES))
def test_a_fifo_is_refused_and_nothing_hangs(ws: Path, case: str):
    name, command, message = FIFO_CASES[case]
    if "mobile.pth" in command:  # a real one-class classifier for the one-class image folder
        import torchvision

        torch.save(torchvision.models.mobilenet_v3_small(num_classes=1).state_dict(), ws / "mobile.pth")
    target = ws / name
    if target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(target)
    assert_process_refuses(command, message, ws, timeout=90)


def test_a_file_where_a_folder_belongs_gives_one_line(ws: Path):
    assert_cli_refuses(TRAIN + ["--out", "runs/good/meta.json"], "runs/good/meta.json", ws)
    assert_cli_refuses(["eval", "runs/good", "--n", "20", "--out", "runs/good/meta.json/r.csv"], "meta.json", ws)
    assert_cli_refuses(["report", "results/mnist.csv", "--out", "weights.safetensors"], "weights.safetensors", ws)


# ---- 6. corrupt contents ------------------------------------------------------------------------------

META_CASES = {
    "not JSON": (lambda p: p.write_text("{not json"), "not valid JSON"),
    "a JSON list": (lambda p: p.write_text("[1, 2]"), "is not a JSON object"),
    "deeply nested": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "not valid JSON"),
    "no config": (lambda p: edit_json(p, lambda m: m.pop("config")), "has no 'config'"),
    "no model": (lambda p: edit_json(p, lambda m: m["config"].pop("model")), "config has no 'model'"),
    "model is a list": (lambda p: edit_json(p, lambda m: m["config"].update(model=["mlp"])), "'model' should be a str"),
    "dropout is a string": (lambda p: edit_json(p, lambda m: m["config"].update(dropout="0.5")), "'dropout' should be a number"),
    "epochs_done is a string": (lambda p: edit_json(p, lambda m: m.update(epochs_done="1")), "'epochs_done'"),
    "metrics is a list": (lambda p: edit_json(p, lambda m: m.update(metrics=[1])), "'metrics'"),
    "a metric is a string": (lambda p: edit_json(p, lambda m: m["metrics"].update(test_accuracy="high")), "test_accuracy"),
    "defense is a number": (lambda p: edit_json(p, lambda m: m.update(defense=3)), "'defense'"),
    "seed is a bool": (lambda p: edit_json(p, lambda m: m["config"].update(seed=True)), "'seed'"),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe{}"), "not valid JSON"),
}


@pytest.mark.parametrize("command", [
    ["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "r.csv"],
    ["show", "runs/good"],
    ["cells", "runs/good", "--out", "c.png", "--resolution", "5"],
], ids=["eval", "show", "cells"])
@pytest.mark.parametrize("case", list(META_CASES), ids=list(META_CASES))
def test_a_corrupt_meta_json_gives_one_line(ws: Path, case: str, command: list[str]):
    damage, message = META_CASES[case]
    damage(ws / "runs/good/meta.json")
    assert_cli_refuses(command, message, ws)


def test_a_corrupt_meta_json_blocks_resume_and_force(ws: Path):
    edit_json(ws / "runs/good/meta.json", lambda m: m["config"].update(dropout="0.5"))
    assert_cli_refuses(TRAIN + ["--out", "runs/good", "--resume"], "'dropout' should be a number", ws)
    assert_cli_refuses(TRAIN + ["--out", "runs/good", "--force"], "move this one's files away", ws)


def _weights_with_header(ws: Path, epoch: str) -> None:
    from safetensors.torch import load_file, save_file

    path = ws / "runs/good/model.safetensors"
    save_file(load_file(path), path, metadata={"robench_epoch": epoch})


WEIGHTS_CASES = {
    "non-numeric robench_epoch": (lambda ws: _weights_with_header(ws, "one"), "robench_epoch 'one' is not a whole number"),
    "negative robench_epoch": (lambda ws: _weights_with_header(ws, "-1"), "robench_epoch"),
    "truncated": (lambda ws: (ws / "runs/good/model.safetensors").write_bytes(
        (ws / "runs/good/model.safetensors").read_bytes()[:1000]), "is corrupt"),  # fmt: skip
    "empty": (lambda ws: (ws / "runs/good/model.safetensors").write_bytes(b""), "is corrupt"),
    "a pickle under the name": (lambda ws: torch.save({"a": 1}, ws / "runs/good/model.safetensors"), "is corrupt"),
}


@pytest.mark.parametrize("case", list(WEIGHTS_CASES), ids=list(WEIGHTS_CASES))
def test_a_corrupt_safetensors_file_gives_one_line(ws: Path, case: str):
    damage, message = WEIGHTS_CASES[case]
    damage(ws)
    assert_cli_refuses(["eval", "runs/good", "--attack", "noise", "--n", "20", "--out", "r.csv"], message, ws)
    make_unfinished(ws / "runs/good")
    assert_cli_refuses(RESUME_2, message, ws)


PTH_CASES = {
    "keys are not strings": ({1: torch.zeros(2)}, "key 1 is a int, not a name"),
    "a list": ([torch.zeros(2)], "does not hold a state dict"),
    "values are numbers": ({"net.0.weight": 3}, "holds a int, not a tensor"),
    "empty": ({}, "holds no tensors"),
    "missing layers": ({"net.fc.weight": torch.zeros(2, 2)}, "do not fit the architecture"),
}


@pytest.mark.parametrize("case", list(PTH_CASES), ids=list(PTH_CASES))
def test_a_malformed_pth_gives_one_line(ws: Path, case: str):
    payload, message = PTH_CASES[case]
    torch.save(payload, ws / "w.pth")
    assert_cli_refuses(["eval", "--arch", "mlp", "--weights", "w.pth", "--attack", "noise", "--n", "20",
                        "--out", "r.csv"], message, ws)  # fmt: skip


OPTIMIZER_CASES = {
    "only an epoch": ({"epoch": 1}, "not the {epoch, optimizer} record"),
    "a list": ([1, 2], "not the {epoch, optimizer} record"),
    "epoch is a string": ({"epoch": "1", "optimizer": {"state": {}, "param_groups": []}}, "is not a whole number"),
    "no param groups": ({"epoch": 1, "optimizer": {"state": {}}}, "no optimizer state dict"),
    "wrong number of groups": ({"epoch": 1, "optimizer": {"state": {}, "param_groups": [
        {"params": [0], "lr": 0.1}, {"params": [1], "lr": 0.1}]}}, "does not fit the model"),  # fmt: skip
    "garbage bytes": (b"\x80\x04garbage", "is unreadable"),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES), ids=list(OPTIMIZER_CASES))
def test_a_wrong_optimizer_state_gives_one_line_on_resume(ws: Path, case: str):
    payload, message = OPTIMIZER_CASES[case]
    make_unfinished(ws / "runs/good")
    path = ws / "runs/good/optimizer.pt"
    path.write_bytes(payload) if isinstance(payload, bytes) else torch.save(payload, path)
    assert_cli_refuses(RESUME_2, message, ws)


def _bad_cell(column: str, value: str):
    def damage(ws: Path) -> None:
        import pandas as pd

        df = pd.read_csv(ws / "results/mnist.csv", dtype=str, keep_default_na=False)
        df.loc[1, column] = value
        df.to_csv(ws / "bad.csv", index=False)

    return damage


CSV_CASES = {
    "accuracy not a number": (_bad_cell("accuracy", "high"), "line 3, column accuracy: 'high' is not a number"),
    "accuracy inf": (_bad_cell("accuracy", "inf"), "column accuracy: 'inf' is outside [0, 1]"),
    "accuracy -5": (_bad_cell("accuracy", "-5"), "column accuracy: '-5.0' is outside [0, 1]"),
    "epsilon nan": (_bad_cell("epsilon", "nan"), "column epsilon"),
    "epsilon negative": (_bad_cell("epsilon", "-0.1"), "column epsilon"),
    "n fractional": (_bad_cell("n", "1.5"), "column n: '1.5' is not a whole number"),
    "seed huge": (_bad_cell("seed", "1e30"), "column seed"),
    "ci above 1": (_bad_cell("ci_high", "7"), "column ci_high"),
    "not a CSV": (lambda ws: (ws / "bad.csv").write_bytes(b"\x00\xff" * 100), "bad.csv"),
    "foreign CSV": (lambda ws: (ws / "bad.csv").write_text("a,b\n1,2\n"), "not a robench results CSV"),
}


@pytest.mark.parametrize("case", list(CSV_CASES), ids=list(CSV_CASES))
def test_a_results_csv_with_a_bad_cell_gives_one_line(ws: Path, case: str):
    damage, message = CSV_CASES[case]
    damage(ws)
    assert_cli_refuses(["report", "bad.csv", "--out", "rep"], message, ws)


def test_a_database_that_is_not_one_gives_one_line(ws: Path):
    (ws / "results/mnist.db").write_bytes(b"not a database" * 100)
    assert_cli_refuses(["report", "results/mnist.csv", "--out", "rep"], "is not a robench results database", ws)
    assert_cli_refuses(["eval", "runs/good", "--n", "20", "--out", "results/mnist.csv"], "results database", ws)


def test_files_robench_did_not_write_are_never_overwritten_or_merged(ws: Path):
    foreign = ws / "runs/foreign"
    foreign.mkdir()
    (foreign / "log.csv").write_text("step,loss\n1,0.5\n")
    assert_cli_refuses(TRAIN + ["--out", "runs/foreign"], "robench did not write it", ws)
    assert_cli_refuses(TRAIN + ["--out", "runs/foreign", "--force"], "robench did not write it", ws)
    assert_cli_refuses(TRAIN + ["--out", "runs/foreign", "--resume"], "robench did not write it", ws)
    (ws / "runs/good/log.csv").write_text("step,loss\n1,0.5\n")
    make_unfinished(ws / "runs/good")
    assert_cli_refuses(RESUME_2, "is not robench's training log", ws)


# ---- 7. numbers out of range --------------------------------------------------------------------------

RANGE_CASES = {
    "eval seed 10^18": (["eval", "runs/good", "--n", "20", "--seed", str(10**18), "--out", "r.csv"], "--seed"),
    "eval seed -1": (["eval", "runs/good", "--n", "20", "--seed", "-1", "--out", "r.csv"], "--seed"),
    "cells seed 10^18": (["cells", "runs/good", "--out", "c.png", "--seed", str(10**18)], "--seed"),
    "eval eps inf": (["eval", "runs/good", "--n", "20", "--eps", "0,inf", "--out", "r.csv"], "eps"),
    "eval eps nan": (["eval", "runs/good", "--n", "20", "--eps", "nan", "--out", "r.csv"], "eps"),
    "eval n 0": (["eval", "runs/good", "--n", "0", "--out", "r.csv"], "--n must be >= 1"),
    "eval batch 0": (["eval", "runs/good", "--n", "20", "--batch-size", "0", "--out", "r.csv"], "--batch-size"),
    "cells span inf": (["cells", "runs/good", "--out", "c.png", "--span", "inf"], "--span"),
    "cells resolution even": (["cells", "runs/good", "--out", "c.png", "--resolution", "4"], "--resolution"),
    "cells index -1": (["cells", "runs/good", "--out", "c.png", "--index", "-1"], "--index"),
    "reproduce n 0": (["reproduce", "mnist", "--quick", "--n", "0", "--out", "study"], "--n must be a positive integer"),
    "reproduce seed 10^18": (["reproduce", "mnist", "--quick", "--seeds", f"0,{10**18}", "--out", "study"], "--seeds"),
    "reproduce epochs 0": (["reproduce", "mnist", "--quick", "--epochs", "0", "--out", "study"], "--epochs"),
    "reproduce adv eps inf": (["reproduce", "mnist", "--quick", "--adv-eps", "inf", "--out", "study"], "--adv-eps"),
    "reproduce warmup nan": (["reproduce", "mnist", "--quick", "--warmup-epochs", "nan", "--out", "study"], "--warmup-epochs"),
    "reproduce eps of an attack not run": (["reproduce", "mnist", "--quick", "--eps", "bogus=0,1", "--out", "study"],
                                           "'bogus', which this study does not run"),  # fmt: skip
    "reproduce unknown attack": (["reproduce", "mnist", "--quick", "--attacks", "bogus", "--out", "study"], "bogus"),
    "torchvision model that is not a classifier": (
        ["eval", "--arch", "raft_small", "--weights", "weights.safetensors", "--n", "2", "--out", "r.csv"],
        "not an image classifier"),  # fmt: skip
    "train seed 10^18": (TRAIN + ["--out", "runs/new", "--seed", str(10**18)], "--seed"),
}


@pytest.mark.parametrize("case", list(RANGE_CASES), ids=list(RANGE_CASES))
def test_numbers_out_of_range_are_refused_up_front(ws: Path, case: str):
    command, message = RANGE_CASES[case]
    assert_cli_refuses(command, message, ws)
    assert not (ws / "study/runs").exists()  # reproduce refused before training anything
