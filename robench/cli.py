"""The `robench` command line: parse options into config objects, call the library, print.

No logic lives here. Every RobenchError, operating-system error (full disk, read-only file system,
too long a name) and database error becomes a one-line message on stderr and exit status 1, in one
place: `RobenchGroup.invoke`. Anything else is a robench bug: it too ends in one line (exit status
2) naming the exception, and ROBENCH_TRACEBACK=1 shows the traceback for the bug report.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import click

from .errors import RobenchError
from .completion import complete_arch, complete_attacks, complete_models
from .untrusted import for_console
from .settings import PLANES, REPORT_FORMATS as FORMATS, CellsConfig, EvalConfig, TrainConfig

DEFAULTS = TrainConfig()
EVAL_DEFAULTS = EvalConfig()
CELLS_DEFAULTS = CellsConfig()


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


@cli.command()
@click.option("--model", default=DEFAULTS.model, help="Architecture: lenet, lenet5, mlp, resnet18.",
              shell_complete=complete_models)
@click.option("--dataset", default=DEFAULTS.dataset, help="mnist, cifar10 or imagenet.")
@click.option("--jr", type=float, default=DEFAULTS.jr, help="Jacobian regularization strength lambda_JR (0 = off), in --jr-units.")
@click.option("--jr-units", type=click.Choice(["normalized", "pixel"]), default=None,
              help="Jacobian the penalty takes: normalized (d logits / d normalized input, the paper's, so "
                   "--jr 0.01 is its lambda) or pixel (d logits / d pixel in [0, 1]; MNIST: 0.3081^2 x the "
                   "normalized lambda). Default: normalized; with --resume, the run's own.")
@click.option("--nproj", type=int, default=DEFAULTS.nproj, help="Random projections per example for the JR estimate.")
@click.option("--exact", is_flag=True, default=DEFAULTS.exact, help="Compute the JR penalty exactly (one pass per class).")
@click.option("--l2", type=float, default=DEFAULTS.l2, help="L2 weight decay lambda_WD (paper: 0.0005).")
@click.option("--dropout", type=float, default=DEFAULTS.dropout, help="Dropout rate (paper: 0.5).")
@click.option("--adv-train", type=click.Choice(["fgsm", "pgd", "trades"]), default=None,
              help="Adversarial training: fgsm (Goodfellow), pgd (Madry's PGD-AT), trades (Zhang et al.).")
@click.option("--adv-eps", type=float, default=DEFAULTS.adv_eps, help="Adversarial training epsilon (L-inf, pixels in [0, 1]).")
@click.option("--adv-steps", type=int, default=DEFAULTS.adv_steps,
              help="PGD/TRADES steps K (step size 2.5 * eps / K; uniform random start for PGD).")
@click.option("--adv-mix", type=float, default=None,
              help="Clean share of the adversarial-training loss (default: fgsm 0.5, pgd 0: Madry's adversarial batch alone).")
@click.option("--trades-beta", type=float, default=DEFAULTS.trades_beta, help="TRADES's beta: CE + beta * KL(f(x) || f(x_adv)).")
@click.option("--igr", type=float, default=DEFAULTS.igr,
              help="Input-gradient regularization strength: igr * mean ||d CE / d x||^2, in --jr-units.")
@click.option("--epochs", type=int, default=DEFAULTS.epochs, help="Epochs (the paper: 250).")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size)
@click.option("--lr", type=float, default=DEFAULTS.lr, help="Initial learning rate.")
@click.option("--momentum", type=float, default=DEFAULTS.momentum)
@click.option("--schedule", type=click.Choice(["quench", "constant"]), default=DEFAULTS.schedule,
              help="quench: lr/10 at 1/3 and again at 2/3 of training (the paper's recipe).")
@click.option("--warmup-epochs", type=float, default=DEFAULTS.warmup_epochs,
              help="Ramp the lr linearly over this many epochs (0: the paper's recipe; short runs need it).")
@click.option("--seed", type=int, default=DEFAULTS.seed)
@click.option("--train-subset", type=int, default=None, help="Train on the first N training images.")
@click.option("--test-subset", type=int, default=None, help="Test on the first N test images.")
@click.option("--norm-samples", type=int, default=DEFAULTS.norm_samples,
              help="Test images used for the per-epoch exact ||J||_F.")
@click.option("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N (torchrun: auto or cuda).")
@click.option("--data-root", default=None, help="Dataset directory (CIFAR-10; MNIST download fallback).")
@click.option("--compile", is_flag=True, default=DEFAULTS.compile,
              help="torch.compile the model (GPU, small batches; not with --jr: no double backward).")
@click.option("--tf32/--no-tf32", default=DEFAULTS.tf32, show_default=True,
              help="TF32 matmuls and convolutions on CUDA (--no-tf32: full fp32).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Overwrite the run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(out_dir: str, resume: bool, force: bool, quiet: bool, **options) -> None:
    """Train a model (optionally with JR, L2, dropout, FGSM adversarial training) into a run directory.

    Under `torchrun --nproc-per-node G -m robench train ...` the G processes train together
    (DistributedDataParallel); --batch-size stays the global batch.
    """
    from .distributed import is_main_process
    from .train import train as run_training

    if resume and force:
        raise RobenchError("--resume and --force exclude each other")
    if options["jr_units"] is None:
        options["jr_units"] = _saved_jr_units(out_dir) if resume else DEFAULTS.jr_units
    config = TrainConfig(**options)
    meta = run_training(config, out_dir, resume=resume, force=force, show_progress=not quiet)
    if not is_main_process():  # under torchrun, rank 0 reports
        return
    metrics = meta.get("metrics", {})
    click.echo(
        f"{out_dir}: {config.model} [{config.defense}] test accuracy "
        f"{metrics.get('test_accuracy', float('nan')):.4f}, mean test ||J||_F "
        f"{metrics.get('test_jacobian_norm_normalized', float('nan')):.3f} (normalized units) / "
        f"{metrics.get('test_jacobian_norm_pixel', metrics.get('test_jacobian_norm', float('nan'))):.3f} (pixel units)"
    )


@cli.command(name="train-many")
@click.option("--vary", "vary", multiple=True, metavar="KEY=V1,V2,...",
              help="A training setting and its values (repeatable; the grid is every combination), e.g. "
                   "--vary jr=0,0.01 --vary dropout=0,0.5. KEY is a `robench train` option name (jr, l2, dropout, "
                   "adv_eps, adv_train, ...); adv_train=none means no adversarial training.")
@click.option("--seeds", "seeds_text", default="0", show_default=True, help="Seeds: 0,1,2 or a count N (0..N-1).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of run directories, one per member: <defense>-s<seed>.")
@click.option("--save-every", type=float, default=60.0, show_default=True,
              help="Seconds between checkpoints (0: every epoch); log rows are kept for every epoch.")
@click.option("--group-size", type=int, default=None, help="At most this many models side by side.")
@click.option("--one-group", is_flag=True, help="Put JR, FGSM-trained and plain models in one group (default: apart).")
@click.option("--stack/--no-stack", default=None,
              help="Side by side (--stack) or one after another (--no-stack); default: side by side on CUDA only "
                   "(on a CPU the stacked step is slower).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_many_command(vary: tuple[str, ...], seeds_text: str, out_dir: str, save_every: float,
                       group_size: int | None, one_group: bool, stack: bool | None, quiet: bool, **options) -> None:
    """Train a grid of models side by side on one device (one stacked network per group).

    Each member writes its own ordinary run directory under --out, resumable by `robench train
    --resume` or by this command again, with the weights that `robench train` gives the same
    settings alone (to float rounding). PGD-AT, TRADES, IGR, exact JR and BatchNorm models train
    one after another.
    """
    import itertools
    from dataclasses import replace
    from pathlib import Path

    from .side_by_side import train_many

    if group_size is not None and group_size < 1:
        raise RobenchError(f"--group-size must be >= 1, got {group_size}")
    if not save_every >= 0:
        raise RobenchError(f"--save-every must be >= 0 seconds, got {save_every}")
    options["jr_units"] = options["jr_units"] or DEFAULTS.jr_units
    base = TrainConfig(**options)
    axes = [_parse_vary(item) for item in vary]
    seeds = _parse_seeds(seeds_text)
    seeds = tuple(range(seeds)) if isinstance(seeds, int) else seeds
    runs = {}
    for values in itertools.product(*[[(key, v) for v in vs] for key, vs in axes]):
        for seed in seeds:
            config = replace(base, seed=seed, **dict(values)).validate()
            runs.setdefault(f"{config.defense}-s{seed}", config)
    jobs = train_many([(c, Path(out_dir) / name) for name, c in runs.items()], show_progress=not quiet,
                      split_programs=not one_group, group_size=group_size, save_every=save_every,
                      stack=stack)  # fmt: skip
    failed = 0
    for job in jobs:
        if isinstance(job.result, dict):
            metrics = job.result.get("metrics", {})
            click.echo(f"{job.out_dir}: test accuracy {metrics.get('test_accuracy', float('nan')):.4f}, mean test "
                       f"||J||_F {metrics.get('test_jacobian_norm_normalized', float('nan')):.3f} (normalized units)")
        else:
            failed += 1
            click.echo(f"{job.out_dir}: {job.result}", err=True)
    if failed:
        raise RobenchError(f"{failed} of {len(jobs)} runs did not finish (see above); the others are saved")


_VARY_KEYS = ("jr", "jr_units", "nproj", "l2", "dropout", "adv_train", "adv_eps", "adv_steps", "adv_mix", "trades_beta", "igr")


def _parse_vary(item: str) -> tuple[str, list]:
    """'jr=0,0.01' -> ('jr', [0.0, 0.01]), typed like the TrainConfig field."""
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not sep or key not in _VARY_KEYS or not text:
        raise RobenchError(f"--vary {item!r}: write KEY=V1,V2 with KEY one of {', '.join(_VARY_KEYS)}")
    values = []
    for word in text.split(","):
        word = word.strip()
        try:
            if key in ("adv_train", "jr_units"):
                values.append(None if word == "none" else word)
            elif key in ("nproj", "adv_steps"):
                values.append(int(word))
            else:
                values.append(float(word))
        except ValueError:
            raise RobenchError(f"--vary {key}: {word!r} is not a valid value") from None
    return key, values


for _param in train.params:  # train-many takes every `robench train` option but --seed, --out and the run modes
    if _param.name not in ("seed", "out_dir", "resume", "force", "quiet"):
        train_many_command.params.append(_param)


def _saved_jr_units(out_dir: str) -> str:
    """The units of the run being resumed (pixel for a run from before units were named), or the
    default when there is no run there yet."""
    from pathlib import Path

    from .checkpoint import META_FILE, read_meta

    if not (Path(out_dir) / META_FILE).is_file():
        return DEFAULTS.jr_units
    return read_meta(out_dir)["config"]["jr_units"]


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
def show(runs: tuple[str, ...]) -> None:
    """Print trained runs side by side: defense, epochs, test accuracy, mean test ||J||_F."""
    from rich.console import Console
    from rich.table import Table

    from .checkpoint import read_meta

    table = Table(title="robench runs", caption="||J||: mean exact test ||J||_F; normalized: d logits / d normalized "
                  "input (the paper's units); pixel: d logits / d pixel in [0, 1]")
    for column in ("run", "model", "defense", "epochs", "test accuracy", "||J|| normalized", "||J|| pixel",
                   "train s"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("run", "model", "defense") else "right")
    for run in runs:
        meta = read_meta(run)
        metrics = meta.get("metrics", {})
        table.add_row(
            for_console(run), for_console(meta["config"]["model"]), for_console(meta.get("defense", "?")),
            str(meta.get("epochs_done", 0)),
            _number(metrics.get("test_accuracy"), 4),
            _number(metrics.get("test_jacobian_norm_normalized")),
            _number(metrics.get("test_jacobian_norm_pixel", metrics.get("test_jacobian_norm"))),
            _number(meta.get("train_seconds"), 0),
        )  # fmt: skip
    from .tables import never_cut, print_table

    print_table(Console(), never_cut(table, keep_whole_from=3))


def _number(value, digits: int = 3) -> str:
    """A metric for a table: '—' where a run does not have it (a run from before the metric existed)."""
    return "—" if not isinstance(value, (int, float)) or value != value else f"{value:.{digits}f}"


@cli.command(name="eval")
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--attack", "attacks", default=EVAL_DEFAULTS.attacks, shell_complete=complete_attacks,
              help="Comma-separated attack or suite names (files in attacks/; see `robench attacks`), "
                   "'default' (noise,fgsm,pgd,cw,autoattack) or 'all'.")
@click.option("--eps", default=None, help="Epsilon list overriding the attacks' grids, e.g. '0,0.1,0.3' or '0,8/255'.")
@click.option("--n", type=int, default=None, help="Evaluate the first N test images (default: all).")
@click.option("--batch-size", type=int, default=EVAL_DEFAULTS.batch_size)
@click.option("--device", default=EVAL_DEFAULTS.device, help="auto, cpu, cuda or cuda:N (torchrun: auto or cuda).")
@click.option("--seed", type=int, default=EVAL_DEFAULTS.seed, help="Seeds random starts and noise.")
@click.option("--arch", default=None, shell_complete=complete_arch, help="Architecture of --weights: robench:NAME, torchvision:NAME or timm:NAME "
              "(a bare NAME: robench's model of that name if it has one for the dataset, else torchvision's).")
@click.option("--weights", type=click.Path(), default=None, help="Weights file for --arch (.safetensors or .pth).")
@click.option("--dataset", default="mnist", help="Dataset of an --arch model: mnist, cifar10 or imagenet.")
@click.option("--normalize", default="dataset", help="Input normalization put in front of an --arch network: "
              "dataset (its mean/std), none (the network takes pixels in [0, 1]) or MEAN,STD per channel.")
@click.option("--num-classes", type=int, default=None,
              help="Outputs of an --arch network, where the weights do not tell (default: from the weights).")
@click.option("--data-root", default=None,
              help="Dataset directory (CIFAR-10: holds cifar-10-batches-py; imagenet: holds val/<class>/...).")
@click.option("--tf32/--no-tf32", default=EVAL_DEFAULTS.tf32, show_default=True,
              help="TF32 matmuls and convolutions on CUDA (--no-tf32: full fp32).")
@click.option("--jacobian-n", type=int, default=None,
              help="Images for the exact ||J||_F rows (default: all --n; 0 skips them; they cost C backward passes per image).")
@click.option("--eot", type=int, default=None,
              help="Gradient samples averaged per attack step (EOT). Default: 20 when the model's outputs are "
                   "random (AutoAttack's rand version), else 1. A randomized model's adversarials are re-checked "
                   "by the majority of max(EOT, 20) passes.")
@click.option("--surrogate", default=None, metavar="RUN_OR_ARCH:WEIGHTS",
              help="Craft the gradient attacks on this model (a run directory, or ARCH:WEIGHTS) and transfer "
                   "them; each adversarial is re-checked on the evaluated model. For models whose gradients are "
                   "missing (non-differentiable preprocessing).")
@click.option("--out", type=click.Path(), default=None, help="Results CSV (default results/<dataset>.csv).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_command(models: tuple[str, ...], eps: str | None, arch: str | None, weights: str | None,
                 dataset: str, normalize: str, num_classes: int | None, out: str | None, quiet: bool,
                 **options) -> None:
    """Attack MODELS (robench run directories) over an epsilon grid and append rows to a CSV.

    Under `torchrun --nproc-per-node G -m robench -- eval ...` the G processes split the test
    images (whole batches each) and rank 0 writes the same rows a single process would. (The `--`
    stops torchrun's own parser from reading --n as an abbreviation of one of its options.)
    """
    from functools import partial

    from rich.console import Console

    from .attacks import parse_eps
    from .checks import warnings_for
    from .distributed import is_main_process
    from .evaluate import evaluate, open_sources
    from .progress import console
    from .tables import attack_tables, clean_table, print_table

    config = EvalConfig(eps=tuple(parse_eps(eps)) if eps is not None else None, **options).validate()
    opener = partial(open_sources, models, arch=arch, weights=weights, dataset=dataset, normalize=normalize,
                     num_classes=num_classes)
    df = evaluate(opener, config, out=out, show_progress=not quiet)
    if not is_main_process():  # under torchrun, rank 0 reports
        return
    stdout = Console()
    print_table(stdout, clean_table(df))
    for table in attack_tables(df):
        print_table(stdout, table)
    for line in warnings_for(df):
        console().print(f"[yellow]warning:[/] {for_console(line)}")


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Directory to write the report into.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="md",
              help="md: report.md; html: also a self-contained report.html (images inlined).")
@click.option("--figure-format", "figure_formats", default="png",
              help="Figure files, comma-separated: png (300 dpi, always written), svg, pdf.")
def report(results: tuple[str, ...], out_dir: str, fmt: str, figure_formats: str) -> None:
    """Summarize results CSVs: summary.csv, one accuracy-vs-epsilon PNG per attack, report.md/html."""
    from rich.console import Console

    from .report import summary_tables, write_report

    from .tables import print_table

    written = write_report(list(results), out_dir, fmt=fmt, figure_formats=figure_formats)
    for table in summary_tables(written.summary):
        print_table(Console(), table)
    click.echo(f"wrote {', '.join(p.name for p in written.files)} to {out_dir}")




@cli.command(name="attacks")
def attacks_command() -> None:
    """List the attack specs and suites in attacks/: engine, class, norm, kind, spec hash."""
    from rich.console import Console
    from rich.table import Table

    from .attacks import load_specs
    from .attacks.suites import DEFAULT, load_suites

    table = Table(title="attacks (files in attacks/); --attack default = " + ",".join(DEFAULT))
    for column in ("name", "engine", "class", "norm", "kind", "spec hash"):
        table.add_column(column)
    specs = load_specs()
    for item in [*specs.values(), *load_suites(specs=specs).values()]:
        missing = next((m.unavailable for m in getattr(item, "members", (item,)) if m.unavailable), "")
        kind = "cascade" if item.kind == "suite" else item.kind + (" (baseline)" if item.role == "baseline" else "")
        kind = "[yellow]not installed[/yellow]" if missing else kind
        if item.kind == "suite":
            table.add_row(item.name, "suite", " > ".join(m.name for m in item.members), item.norm, kind, item.spec_hash)
        else:
            table.add_row(item.name, item.engine, item.class_name, item.norm, kind, item.spec_hash)
    Console(width=max(100, Console().width)).print(table)


@cli.command()
@click.argument("model_a")
@click.argument("model_b")
@click.option("--attack", default=None, help="Only this attack (e.g. pgd, or worst_case); default: every one.")
@click.option("--results", "results", multiple=True, type=click.Path(),
              help="Results CSV or .db (repeatable; rows found in several count once); default results/mnist.csv.")
def compare(model_a: str, model_b: str, attack: str | None, results: tuple[str, ...]) -> None:
    """Compare two evaluated models, or two defenses over their seeds, on the same images.

    Each side is a run directory as given to `robench eval`, its name, or a prefix of its weights hash
    (the CSV's model_hash); or the seeds of one defense: a comma-separated list of those
    (runs/jr-s0,runs/jr-s1,runs/jr-s2) or defense:LABEL (every model with that defense column).
    Two models: difference in accuracy, 95% interval over the images (Newcombe's method 10), exact
    McNemar p; about those two models only. Groups: the interval over seeds and images (two-level
    bootstrap), which needs 3 seeds per side. Rows compare only with the same attack spec, n,
    evaluation seed and protocol; a mismatch is named in one line.
    """
    from rich.console import Console
    from rich.table import Table

    from .results.compare import NORM_SYMBOL, describe
    from .results.compare_cli import compare_from_files

    found, label_a, label_b, refused = compare_from_files(list(results) or ["results/mnist.csv"], model_a, model_b,
                                                          attack)  # fmt: skip
    groups = any(c["seeds_a"] > 1 or c["seeds_b"] > 1 for c in found)
    how = found[0]["method"] if groups else "Newcombe's method 10 over the images, about these two models; exact McNemar p"
    table = Table(title=f"{for_console(label_a)} vs {for_console(label_b)}: difference in accuracy (points), 95% CI")
    columns = ["attack", "norm", "eps", "n", "A", "B", "A - B", "95% CI", "p"]
    columns += ["seeds A", "seeds B"] if groups else ["A only", "B only"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("attack", "norm") else "right")
    for c in found:
        tail = [str(c["seeds_a"]), str(c["seeds_b"])] if groups else [str(c["a_only"]), str(c["b_only"])]
        table.add_row(for_console(c["attack"]), for_console(NORM_SYMBOL.get(c["norm"], c["norm"])), f"{c['epsilon']:g}", str(c["n"]),
                      f"{c['accuracy_a']:.3f}", f"{c['accuracy_b']:.3f}", f"{100 * c['difference']:+.1f}",
                      f"[{100 * c['low']:.1f}, {100 * c['high']:.1f}]", f"{c['p_value']:.2g}", *tail)  # fmt: skip
    from .tables import never_cut, print_table

    print_table(Console(), never_cut(table, keep_whole_from=2))
    notes = sorted({c["seeds_note"] for c in found if c.get("seeds_note")})
    for line in [f"95% CI: {how}", *notes, *refused]:
        click.echo(for_console(line))
    for c in found:
        if c["attack"] == "worst_case" and c["epsilon"] > 0:
            click.echo(describe(c, label_a, label_b))


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Results CSV (and its .db) to merge into.")
def merge(inputs: tuple[str, ...], out: str) -> None:
    """Combine results (rows and per-example outcomes) of jobs that ran on separate machines."""
    from .results import merge as merge_results

    added = merge_results(list(inputs), out)
    click.echo(f"merged {len(inputs)} file(s) into {out}: {added} new row(s)")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@click.option("--index", type=int, default=CELLS_DEFAULTS.index, help="Test image index.")
@click.option("--plane", type=click.Choice(PLANES), default=CELLS_DEFAULTS.plane,
              help="random: two Gaussian directions; adversarial: the first model's FGSM direction + a random one.")
@click.option("--span", type=float, default=CELLS_DEFAULTS.span, help="Half-width of the plane (L2, pixels in [0, 1]).")
@click.option("--resolution", type=int, default=CELLS_DEFAULTS.resolution, help="Grid points per side (odd).")
@click.option("--seed", type=int, default=CELLS_DEFAULTS.seed, help="Seeds the random direction(s).")
def cells(models: tuple[str, ...], out: str, **options) -> None:
    """Draw the decision cells of MODELS on a plane through one test image (the paper's Figure 1)."""
    from .cells import write_cells

    result = write_cells(list(models), CellsConfig(**options), out)
    for label, distance in zip(result["labels"], result["distances"]):
        if distance == float("inf"):
            click.echo(f"{label}: no other class within ±{result['span']:g} in the plane")
        else:
            click.echo(f"{label}: nearest other class at L2 distance {distance:.3f} in the plane")
    click.echo(f"wrote {out}")


@cli.group()
def reproduce() -> None:
    """Reproduce the paper's experiments end to end (train, attack, report); restartable."""


@reproduce.command(name="mnist")
@click.option("--quick", is_flag=True, help="10,000 images, 2 epochs with warm-up, 100 test images (50 for CW), short grids: < 10 min on 2 CPU cores per seed.")
@click.option("--seeds", default=None, help="Training seeds, e.g. 0,1,2,3,4 (a single N >= 1 means seeds 0..N-1, and 0 seed 0; full: 0-4, quick: 0).")
@click.option("--epochs", type=int, default=None, help="Training epochs (full: 250, the paper's recipe; quick: 2).")
@click.option("--train-subset", type=int, default=None, help="Train on the first N images (full: all 60,000).")
@click.option("--warmup-epochs", type=float, default=None, help="Linear lr warm-up (full: 0, the paper's recipe; quick: 1).")
@click.option("--adv-eps", type=float, default=None, help="FGSM adversarial-training epsilon, L-inf in pixels (default 0.1; see reproduce.py).")
@click.option("--n", type=int, default=None, help="Attack the first N test images (full: all 10,000).")
@click.option("--defenses", default=None, help="Comma-separated: none, l2, dropout, jr, all (Table 1), base, base+adv, "
              "base+jr, base+jr+adv (Figure 3; base = L2 + dropout); default all nine. Beyond the paper: pgd-at, trades, igr, jr+pgd-at.")
@click.option("--attacks", default=None, shell_complete=complete_attacks, help="Attack or suite names, 'default' or 'all' (full: default; quick: noise,fgsm,pgd,cw).")
@click.option("--model", default=None, shell_complete=complete_models, help="Architecture (default: lenet, the paper's LeNet').")
@click.option("--attack-n", multiple=True, help="Cap one attack's test images, e.g. --attack-n cw=200 (repeatable).")
@click.option("--eps", "eps_grids", multiple=True, help="One attack's epsilon grid, e.g. --eps pgd=0,0.1,0.2 (repeatable).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--out", default="results/reproduce-mnist", type=click.Path(file_okay=False), help="Study directory.")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", help="Report format.")
def reproduce_mnist_command(quick: bool, out: str, fmt: str, device: str, eps_grids: tuple[str, ...], **overrides) -> None:
    """Train the paper's MNIST defense grid, attack every model, write the report and claims.md (skips finished work)."""
    from dataclasses import replace

    from rich.console import Console

    from .reproduce import QUICK, ReproduceConfig, reproduce_mnist
    from .report import summary_tables

    config = QUICK if quick else ReproduceConfig()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("attack_n"):
        changes["attack_n"] = _parse_attack_n(changes["attack_n"])
    else:
        changes.pop("attack_n", None)
    if eps_grids:
        changes["eps"] = {**config.eps, **_parse_eps_grids(eps_grids)}
    if "defenses" in changes:
        changes["defenses"] = tuple(d.strip() for d in changes["defenses"].split(",") if d.strip())
    if "seeds" in changes:
        changes["seeds"] = _parse_seeds(changes["seeds"])
    config = replace(config, device=device, **changes)
    config.train_configs()  # every option checked before any work starts
    from .reproduce import check_attack_names

    check_attack_names(config, [*(_parse_eps_grids(eps_grids) if eps_grids else {}), *changes.get("attack_n", {})])
    report = reproduce_mnist(config, out, fmt=fmt)
    from .tables import print_table

    for table in summary_tables(report.summary):
        print_table(Console(), table)
    click.echo(f"report in {out}/report; claims in {out}/claims.md")


@reproduce.command(name="merge")
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Merged study directory: new, empty, or an earlier merge (replaced; it may be one of the BUNDLES).")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", help="Report format.")
def reproduce_merge_command(bundles: tuple[str, ...], out: str, fmt: str) -> None:
    """Merge study slices (bundles from robench.bundle.write_bundle, .tar.gz or extracted) into one study:
    claims and report from the united results, and what of the paper's grid is still missing."""
    from .bundle import merge_bundles
    from .slices import study_summary

    study = study_summary(merge_bundles(list(bundles), out, fmt=fmt))
    click.echo(f"merged {len(bundles)} bundle(s) into {out}: {len(study['runs'])} runs, "
               f"{len(study['defenses'])} defenses ({', '.join(study['defenses'])}), "
               f"{len(study['seeds'])} seeds ({', '.join(map(str, study['seeds']))})")  # fmt: skip
    click.echo(f"claims in {out}/claims.md; report in {out}/report")
    if study["unfinished"]:
        click.echo(f"unfinished runs (trained for fewer epochs than asked): {', '.join(study['unfinished'])}")
    missing = "; ".join(f"{d} seeds {','.join(map(str, seeds))}" for d, seeds in study["missing"].items())
    click.echo(f"still missing from the paper's grid (nine defenses x seeds 0-4): {missing}" if missing
               else "the paper's grid (nine defenses x seeds 0-4) is complete")  # fmt: skip


def _parse_seeds(text: str) -> tuple[int, ...] | int:
    """'0,1,2' -> those seeds; a lone 'N' -> N seeds (0..N-1), the option's meaning before lists
    ('0' is seed 0: zero seeds would be no study)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise RobenchError(f"--seeds takes integers like 0,1,2 (or a count N), got {text!r}")
    if len(parts) == 1:  # a count N, except 0, which can only mean seed 0 itself
        return (0,) if int(parts[0]) == 0 else int(parts[0])
    return tuple(int(p) for p in parts)


def _parse_eps_grids(items: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    from .attacks import parse_eps

    grids = {}
    for item in items:
        name, _, values = item.partition("=")
        if not name.strip() or not values.strip():
            raise RobenchError(f"--eps takes NAME=LIST, e.g. pgd=0,0.1,0.2, got {item!r}")
        grids[name.strip()] = tuple(parse_eps(values))
    return grids


def _parse_attack_n(items: tuple[str, ...]) -> dict[str, int]:
    caps = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise RobenchError(f"--attack-n takes NAME=N with N >= 1, got {item!r}")
        caps[name.strip()] = int(value)
    return caps


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="robench")


if __name__ == "__main__":
    main()
