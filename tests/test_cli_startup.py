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
