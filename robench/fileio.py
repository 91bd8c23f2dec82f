"""Atomic file writes: a crash or Ctrl-C never leaves a half-written artifact behind.

Everything robench writes goes to a temporary file in the target's own directory and is then moved
over the target with `os.replace`, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success move it over `target`.

    Whatever the writer raises because the disk is full, read-only or the name too long (an
    OSError, or the RuntimeError torch.save and safetensors wrap one in) becomes one RobenchError
    naming `target`; the old `target`, if any, is untouched and the temporary file removed.

    Args:
        target: the final file. Its directory must exist and be writable.
    """
    from .errors import RobenchError

    target = Path(target)
    refuse_special(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise RobenchError(f"cannot write {target}: {describe_os_error(exc)}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts should read like any file
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~umask)  # a writer that recreated the file made it 0600 again
            os.replace(tmp_path, target)
        except OSError as exc:
            raise RobenchError(f"cannot write {target}: {describe_os_error(exc)}") from None
        except RuntimeError:  # torch.save / safetensors report a failed write this way
            trouble = _disk_trouble(tmp_path)
            if not trouble:
                raise
            raise RobenchError(f"cannot write {target}: {trouble}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def describe_os_error(exc: OSError) -> str:
    """The reason part of a one-line message: 'No space left on device', 'File name too long', ..."""
    return exc.strerror or str(exc) or type(exc).__name__


def _disk_trouble(path: Path) -> str | None:
    """Why writing into `path`'s directory fails, when the file system says so (full or read-only)."""
    try:
        stats = os.statvfs(path.parent)
    except (OSError, AttributeError):
        return None
    if stats.f_flag & getattr(os, "ST_RDONLY", 1):
        return "Read-only file system"
    if stats.f_bavail * stats.f_frsize < (1 << 20):
        return "No space left on device"
    return None


def refuse_special(path: str | os.PathLike) -> None:
    """Refuse a path that exists but is not a regular file (a FIFO, a device, a socket, a folder):
    opening a FIFO blocks forever, and a folder is not what the user meant to name."""
    import stat

    from .errors import RobenchError

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RobenchError(f"cannot use {path}: {describe_os_error(exc)}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise RobenchError(f"{path} is {kind}; robench reads and writes regular files only")


def require_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a Path, checked to exist and be a regular file before anything opens it."""
    from .errors import RobenchError

    path = Path(path)
    if not os.path.lexists(path):
        raise RobenchError(f"{what} {path} not found")
    refuse_special(path)
    if not path.exists():
        raise RobenchError(f"{what} {path} not found (a broken link)")
    return path


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
        # a name of this process's own: two evaluations checking one folder at once must not remove
        # each other's probe (a shared name failed one of them with "No such file or directory")
        probe = directory / f".robench-write-test.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        write_text_atomic(probe, "")
        probe.unlink()
    except OSError as exc:
        raise RobenchError(f"{failure}: {describe_os_error(exc)}") from None
    except RobenchError as exc:
        raise RobenchError(f"{failure}: {str(exc).split(': ')[-1]}") from None
    return directory
