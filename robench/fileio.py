"""Atomic file writes: a crash or Ctrl-C never leaves a half-written artifact behind.

Everything robench writes goes to a temporary file in the target's own directory and is then moved
over the target with `os.replace`, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success move it over `target`.

    Args:
        target: the final file. Its directory must exist and be writable.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts should read like any file
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` and then atomically move the result to `target`."""
    with atomic_path(target) as tmp:
        write(tmp)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write `text` to `target` atomically."""
    write_atomic(target, lambda p: p.write_text(text))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `target` atomically."""
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def ensure_writable_dir(directory: str | os.PathLike, failure: str) -> Path:
    """Create `directory` if needed and prove it writable with a probe file, before long work starts.

    Args:
        directory: the folder to check.
        failure: the start of the one-line error, e.g. "cannot write results to x.csv".

    Raises:
        RobenchError: "<failure>: <reason>" when the folder cannot be made or written.
    """
    from .errors import RobenchError

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".robench-write-test"
        write_text_atomic(probe, "")
        probe.unlink()
    except OSError as exc:
        raise RobenchError(f"{failure}: {exc.strerror or exc}") from None
    return directory
