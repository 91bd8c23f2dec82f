"""The `robench` command line: parse options into config objects, call the library, print.

No logic lives here. Every RobenchError, operating-system error (full disk, read-only file system,
too long a name) and database error becomes a one-line message on stderr and exit status 1, in one
place: `RobenchGroup.invoke`. Anything else is a robench bug: it too ends in one line (exit status
2) naming the exception, and ROBENCH_TRACEBACK=1 shows the traceback for the bug report.

This module is the group, that error handling and the entry point; the commands live by stage:
`cli_train` (train, train-many, show), `cli_eval` (eval, attacks, compare, merge, report, cells),
`cli_reproduce` (reproduce mnist, reproduce merge), and the text-option parsers in `cli_options`.
Each command imports its heavy libraries inside its body, so `robench --help` stays instant.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import click

from . import cli_options
from .cli_eval import attacks_command, cells, compare, eval_command, merge, report
from .cli_reproduce import reproduce
from .cli_train import show, train, train_many_command
from .errors import RobenchError

_parse_seeds = cli_options.parse_seeds  # the name tests/test_reproduce.py imports from here


class RobenchGroup(click.Group):
    """A click group that turns user-facing errors into one line and a non-zero exit."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # `robench --bogus`: one line too
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # one line too, not click's usage block; exit status 2 as click's
            raise _one_line(exc) from None
        except RobenchError as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(f"permission denied: {exc.filename}") from None
        except OSError as exc:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"results database error: {exc}") from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller --batch-size or --n") from None
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is saved, rerun the same command to resume", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: still one line, never a traceback (unless asked for)
            if os.environ.get("ROBENCH_TRACEBACK"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            click.echo(f"Error: internal error ({type(exc).__name__}: {first}); please report it with the "
                       "command that caused it (ROBENCH_TRACEBACK=1 shows the traceback)", err=True)
            sys.exit(2)


def _one_line(exc: click.UsageError) -> click.ClickException:
    """A usage error as one `Error:` line pointing at --help, keeping click's exit status 2."""
    where = exc.ctx.command_path if exc.ctx is not None else "robench"
    error = click.ClickException(f"{exc.format_message()} (see {where} --help)")
    error.exit_code = exc.exit_code
    return error


@click.group(cls=RobenchGroup, context_settings={"auto_envvar_prefix": "ROBENCH", "show_default": True})
@click.version_option(package_name="robench")
def cli() -> None:
    """Train classifiers with and without Jacobian regularization and measure their robustness."""


# Registered in the order the commands were written; `robench --help` lists them alphabetically.
for _command in (train, train_many_command, show, eval_command, report, attacks_command, compare, merge, cells,
                 reproduce):  # fmt: skip
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="robench")


if __name__ == "__main__":
    main()
