"""Without torchattacks (a user who removed it, or an environment that never had it), every Foolbox attack
still runs, `robench attacks` still lists everything, and asking for an attack that needs torchattacks gets
one line naming what to install. Run in a subprocess whose import of torchattacks fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCK = "import sys; sys.modules['torchattacks'] = None  # `import torchattacks` now raises ImportError\n"


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet"}
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def test_foolbox_attacks_resolve_and_torchattacks_ones_are_refused_in_one_line():
    done = _run("""
        from robench.attacks import load_specs, resolve_attacks
        from robench.attacks.suites import resolve
        from robench.errors import RobenchError
        specs = load_specs()
        assert specs["apgd-ce"].unavailable and not specs["pgd"].unavailable
        assert [s.name for s in resolve("fgsm,pgd")] == ["fgsm", "pgd"]
        assert "apgd-ce" not in [s.name for s in resolve("all")] and "pgd" in [s.name for s in resolve("all")]
        for names in ("apgd-ce", "autoattack", "default"):
            try:
                resolve(names)
            except RobenchError as exc:
                print("REFUSED", exc)
            else:
                raise SystemExit(f"{names} resolved without torchattacks")
    """)
    assert done.returncode == 0, done.stderr
    refusals = [line for line in done.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refusals) == 3 and all("pip install torchattacks==3.3.0" in line for line in refusals), done.stdout


def test_the_attack_listing_works_and_says_what_is_not_installed():
    done = _run("""
        from click.testing import CliRunner
        from robench.cli import cli
        result = CliRunner().invoke(cli, ["attacks"], terminal_width=200)
        print(result.exit_code)
        print(result.output)
    """)
    assert done.returncode == 0, done.stderr
    code, output = done.stdout.split("\n", 1)
    assert code == "0", output
    assert "apgd-ce" in output and "not installed" in output and "pgd" in output


def test_resolving_an_attack_loads_only_its_engine():
    """`eval --attack pgd` checks pgd against Foolbox and never imports torchattacks (0.8 s with the scipy.stats
    it pulls in): an evaluation pays for the engines it uses."""
    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet"}
    code = ("import sys\nfrom robench.attacks.suites import resolve\n"
            "assert [s.name for s in resolve('fgsm,pgd')] == ['fgsm', 'pgd']\n"
            "assert 'torchattacks' not in sys.modules\n"
            "resolve('autoattack-fast')\nassert 'torchattacks' in sys.modules\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
