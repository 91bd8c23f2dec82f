"""One writer per output directory: a run, a report or a study is written by one process at a time.

Two `robench train --out runs/x` started together would otherwise both train, both save, and both
report success for a directory that holds only one of them. The lock is an advisory `flock` on the
directory itself (no lock file to leave behind or to clean up): the kernel drops it when its process
ends, however it ends (kill -9 included), so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import RobenchError


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, *, what: str = "--out") -> Iterator[Path]:
    """Hold the directory's lock for the with-block; refuse at once (one line) if another process has it.

    Args:
        directory: the output directory (created if needed).
        what: the option that named it, for the message ("choose another --out").
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the writes stay atomic, only the guard is missing
        yield Path(directory)
        return
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise RobenchError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            raise RobenchError(
                f"{directory} is being written by another robench process{f' (pid {owner})' if owner else ''}; "
                f"wait for it to finish or choose another {what}"
            ) from None
        yield directory
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock_owner(fd: int) -> str | None:
    """The pid holding a flock on the file behind `fd`, from /proc/locks (Linux); None if unknown."""
    try:
        inode = os.fstat(fd).st_ino
        with open("/proc/locks") as locks:
            for line in locks:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                    return parts[4]
    except (OSError, ValueError):
        return None
    return None
