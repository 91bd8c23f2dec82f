"""`robench train`, `robench train-many` and `robench show`: make run directories and list them.

Options become a `TrainConfig`; the library (`train.train`, `side_by_side.train_many`) does the
work. `train-many` takes every `robench train` option (but --seed, --out and the run modes) by
copying the click parameters, so the two commands cannot drift apart.
"""

from __future__ import annotations

import click

from .cli_options import parse_seeds, parse_vary
from .completion import complete_models
from .errors import RobenchError
from .settings import TrainConfig
from .untrusted import for_console

DEFAULTS = TrainConfig()


@click.command()
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


@click.command(name="train-many")
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
    axes = [parse_vary(item) for item in vary]
    seeds = parse_seeds(seeds_text)
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


@click.command()
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
