"""One style of rich progress bar for every long loop (training epochs, attacks)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# stderr=True looks sys.stderr up at each write, so test runners that swap it see the output.
_console = Console(stderr=True)


def console() -> Console:
    """The console robench draws progress and warnings on (stderr, so stdout stays for data)."""
    return _console


def make_progress(*, disable: bool = False) -> Progress:
    """A progress bar with description, bar, done/total, elapsed, remaining and a live status field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=_console,
        disable=disable,
        transient=False,
    )
