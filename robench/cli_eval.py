"""The commands after training: attack models (`eval`, `attacks`), read the results (`compare`,
`merge`, `report`) and draw decision cells (`cells`).

Each parses options into a config or plain arguments, calls the library and prints tables; the
heavy modules (torch, foolbox, pandas, matplotlib) are imported inside the commands, so `--help`
stays instant.
"""

from __future__ import annotations

import click

from .completion import complete_arch, complete_attacks
from .settings import PLANES, REPORT_FORMATS as FORMATS, CellsConfig, EvalConfig
from .untrusted import for_console

EVAL_DEFAULTS = EvalConfig()
CELLS_DEFAULTS = CellsConfig()


@click.command(name="eval")
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

    from .attacks.specs import parse_eps
    from .eval_done import finished_table

    config = EvalConfig(eps=tuple(parse_eps(eps)) if eps is not None else None, **options).validate()
    # Nothing left to do is answered from the store before a model, the test set or an engine is loaded.
    df = finished_table(models, config, out) if arch is None and weights is None else None
    if df is None:
        from .distributed import is_main_process
        from .evaluate import evaluate, open_sources

        opener = partial(open_sources, models, arch=arch, weights=weights, dataset=dataset, normalize=normalize,
                         num_classes=num_classes)
        df = evaluate(opener, config, out=out, show_progress=not quiet)
        if not is_main_process():  # under torchrun, rank 0 reports
            return
    from .checks import warnings_for
    from .progress import console
    from .tables import attack_tables, clean_table, print_table

    stdout = Console()
    print_table(stdout, clean_table(df))
    for table in attack_tables(df):
        print_table(stdout, table)
    for line in warnings_for(df):
        console().print(f"[yellow]warning:[/] {for_console(line)}")


@click.command()
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


@click.command(name="attacks")
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


@click.command()
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


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Results CSV (and its .db) to merge into.")
def merge(inputs: tuple[str, ...], out: str) -> None:
    """Combine results (rows and per-example outcomes) of jobs that ran on separate machines."""
    from .results import merge as merge_results

    added = merge_results(list(inputs), out)
    click.echo(f"merged {len(inputs)} file(s) into {out}: {added} new row(s)")


@click.command()
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
