"""An instant CLI: `robench --help` and every command's --help import no torch, pandas or foolbox."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [[], ["train"], ["eval"], ["report"], ["cells"], ["show"], ["compare"], ["merge"], ["attacks"],
            ["reproduce"], ["reproduce", "mnist"]]  # fmt: skip
PROBE = """
import sys
from robench.cli import cli
try:
    cli(sys.argv[1:] + ["--help"], prog_name="robench")
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "pandas", "foolbox", "numpy", "matplotlib") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "robench" for c in COMMANDS])
def test_help_imports_no_heavy_library(command):
    done = subprocess.run([sys.executable, "-c", PROBE, *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: robench" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY=", done.stdout.splitlines()[-1]


def test_shell_completion_names_attacks_and_models():
    """Completion offers the packaged attacks (the last item of a comma list), robench's models and
    the --arch prefixes, through click's own mechanism, in a process that imports no torch."""
    import os

    from robench.attacks.suites import resolve
    from robench.completion import MODEL_NAMES
    from robench.models import MODELS

    assert MODEL_NAMES == tuple(MODELS)
    env = {**os.environ, "_ROBENCH_COMPLETE": "bash_complete", "COMP_WORDS": "robench eval --attack pgd,au",
           "COMP_CWORD": "3"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", "from robench.cli import main; main()"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    offered = {line.split(",", 1)[1] for line in done.stdout.splitlines() if line.startswith("plain,")}
    expected = {f"pgd,{item.name}" for item in resolve("all") if item.name.startswith("au")}
    assert offered == expected and expected
    env.update(COMP_WORDS="robench eval --arch t", COMP_CWORD="3")
    done = subprocess.run([sys.executable, "-c", "from robench.cli import main; main()"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert {line.split(",", 1)[1] for line in done.stdout.splitlines()} == {"torchvision:", "timm:"}
