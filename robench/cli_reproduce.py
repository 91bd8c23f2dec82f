"""`robench reproduce`: the paper's experiments end to end (`mnist`) and the union of study slices
(`merge`).

The options override fields of `reproduce.ReproduceConfig` (full or --quick); every value is checked
before any work starts, and `reproduce.reproduce_mnist` skips what is already finished.
"""

from __future__ import annotations

import click

from .cli_options import parse_attack_n, parse_eps_grids, parse_seeds
from .completion import complete_attacks, complete_models


@click.group()
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
        changes["attack_n"] = parse_attack_n(changes["attack_n"])
    else:
        changes.pop("attack_n", None)
    if eps_grids:
        changes["eps"] = {**config.eps, **parse_eps_grids(eps_grids)}
    if "defenses" in changes:
        changes["defenses"] = tuple(d.strip() for d in changes["defenses"].split(",") if d.strip())
    if "seeds" in changes:
        changes["seeds"] = parse_seeds(changes["seeds"])
    config = replace(config, device=device, **changes)
    config.train_configs()  # every option checked before any work starts
    from .reproduce import check_attack_names

    check_attack_names(config, [*(parse_eps_grids(eps_grids) if eps_grids else {}), *changes.get("attack_n", {})])
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

