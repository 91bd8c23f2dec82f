"""`robench report`: results CSVs -> summary.csv, one accuracy-vs-epsilon PNG per attack, report.md/html.

This module is the stage's entry point: it checks every input, then writes the files in order. The
work lives in one module per job, so that each can be read (and tested) alone:
    robench.summary          the numbers of summary.csv (its columns are described there)
    robench.bands            which models are averaged into one curve, the curves, the comparisons
    robench.plots            the figures (robench.figure_style: how they look)
    robench.report_markdown  report.md and report.html
Their public names are importable from here too, as they were when this was one file.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from .bands import BAND_KEY, CONFIG_IGNORED, Comparison, attack_curves, band_caption, comparisons, provenance
from .errors import RobenchError
from .fileio import ensure_writable_dir, write_atomic, write_text_atomic
from .report_markdown import (
    CSS, Bold, Code, format_number, headline_table, markdown_to_html, render_markdown, short_labels, summary_markdown,
)  # fmt: skip
from .results import JACOBIAN_ATTACKS, read_results
from .results.select import curve_order, current_rows, headline
from .settings import REPORT_FORMATS as FORMATS
from .summary import DISTANCE_ATTACKS, LEVEL, auc, eps_below, select_rows, summarize
from .untrusted import for_console, inside, slug

__all__ = [
    "BAND_KEY", "CONFIG_IGNORED", "CSS", "DISTANCE_ATTACKS", "FORMATS", "LEVEL", "NORM_LABELS", "REQUIRED",
    "Bold", "Code", "Comparison", "Report", "attack_curves", "auc", "band_caption", "comparisons", "eps_below",
    "headline_table", "load_results", "markdown_to_html", "png_name", "provenance", "render_markdown",
    "select_rows", "summarize", "summary_markdown", "summary_tables", "write_report",
]  # fmt: skip

NORM_LABELS = {"linf": "L∞", "l2": "L2"}
REQUIRED = ("model", "dataset", "defense", "attack", "norm", "epsilon", "accuracy", "n", "seed", "model_hash")


class Report(NamedTuple):
    """What `write_report` produced: the summary table and the files written."""

    summary: pd.DataFrame
    files: list[Path]


def load_results(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Read and concatenate results (CSV or store), refusing missing files and tables robench did not write."""
    from .results.store import store_paths

    if not paths:
        raise RobenchError("name at least one results CSV")
    frames = []
    from .fileio import refuse_special

    for path in map(Path, paths):
        csv, db = store_paths(path)
        refuse_special(path)
        if not csv.is_file() and not db.is_file():
            raise RobenchError(f"results file {path} not found" if not path.exists() else f"{path} is not a file")
        df = read_results(path)
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise RobenchError(f"{path} is not a robench results CSV (missing columns: {', '.join(missing)})")
        if df.empty:
            raise RobenchError(f"{path} holds no results")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def write_report(paths: list[str | os.PathLike], out_dir: str | os.PathLike, *, fmt: str = "md",
                 figure_formats: str | tuple[str, ...] = ("png",)) -> Report:  # fmt: skip
    """Write summary.csv, <attack>.png (300 dpi; also .svg/.pdf when `figure_formats` names them),
    report.md (and report.html for fmt="html") into out_dir.

    Every input is checked, and out_dir made and tested for writing, before anything is drawn. Names
    and labels come from data: file names are slugs inside out_dir, text is shown literally, and the
    HTML holds no raw HTML and no external reference. One writer at a time per out_dir.
    """
    if fmt not in FORMATS:
        raise RobenchError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    from .figure_style import parse_formats
    from .locking import exclusive

    formats = parse_formats(figure_formats if isinstance(figure_formats, str) else ",".join(figure_formats))
    df = load_results(paths)
    out = _writable_dir(out_dir)
    with exclusive(out):
        return _write_report(paths, df, out, fmt, formats)


def png_name(attack: str) -> str:
    """The PNG file of an attack's curves: a slug of its name (names come from the CSV, i.e. from data)."""
    return f"{slug(attack)}.png"


def _write_report(paths, df: pd.DataFrame, out: Path, fmt: str, formats: tuple[str, ...] = ("png",)) -> Report:
    from .figure_style import figure_title
    from .plots import accuracy_figure, save_figure, zero_from

    rows, summary = headline(select_rows(df)), summarize(df)
    metas = {m: provenance(m) for m in rows["model"].unique()}
    files = [out / "summary.csv"]
    write_atomic(files[0], lambda tmp: summary.to_csv(tmp, index=False))
    curves = {}
    for attack in curve_order(a for a in rows["attack"].unique() if a not in JACOBIAN_ATTACKS):
        curves[attack] = attack_curves(rows, attack, metas)
        sub = rows[rows["attack"] == attack]
        norm, datasets = sub["norm"].iloc[0], sorted(sub["dataset"].unique())
        sizes = "/".join(str(int(n)) for n in sorted(sub["n"].unique()))
        seeds = max((c.k for c in curves[attack]), default=1)
        title = figure_title(attack, norm, datasets[0] if len(datasets) == 1 else "+".join(datasets), sizes, seeds,
                             sub["attack_params"].iloc[-1])  # fmt: skip
        fig = accuracy_figure(curves[attack], title=title, dataset=datasets[0] if len(datasets) == 1 else None,
                              xlabel=f"ε ({NORM_LABELS.get(norm, norm)}, pixel scale [0, 1])",
                              caption=band_caption(curves[attack], zero_from(curves[attack])))  # fmt: skip
        for figure_format in formats:
            files.append(inside(out, png_name(attack)[: -len(".png")] + "." + figure_format))
            save_figure(fig, files[-1], figure_format)
    from .report_certified import CERTIFIED_PNG, write_certified

    band_files, band_table = write_certified(rows, out, formats, short_labels(list(summary["model"])))
    files += band_files
    context = dict(paths=paths, rows=rows, summary=summary, curves=curves, metas=metas,
                   compared=comparisons(paths, current_rows(df), metas), certified=band_table)
    files.append(out / "report.md")
    write_text_atomic(files[-1], render_markdown(**context, images={a: png_name(a) for a in curves},
                                                 certified_image=CERTIFIED_PNG))  # fmt: skip
    if fmt == "html":
        inline = lambda name: "data:image/png;base64," + base64.b64encode((out / name).read_bytes()).decode()  # noqa: E731
        files.append(out / "report.html")
        write_text_atomic(files[-1], markdown_to_html(render_markdown(
            **context, images={a: inline(png_name(a)) for a in curves},
            certified_image=inline(CERTIFIED_PNG) if band_files else "")))  # fmt: skip
    return Report(summary, files)


def _writable_dir(out_dir: str | os.PathLike) -> Path:
    return ensure_writable_dir(out_dir, f"cannot write the report to {out_dir}")


def summary_tables(summary: pd.DataFrame) -> list[Any]:
    """The summary as rich tables for the terminal: clean metrics, then AUC and eps50 per attack.

    Three narrow tables rather than one wide one, so they stay readable in an 80-column terminal.
    """
    from rich.table import Table

    from .tables import never_cut

    labels = short_labels(list(summary["model"]))
    distance = [c for c in summary.columns if c.endswith("_median_distance") and summary[c].notna().any()]
    parts = [
        ("clean accuracy and mean test ||J||_F (normalized: the paper's units; pixel: d logits / d pixel)",
         ["clean_accuracy", "jacobian_norm_normalized", "jacobian_norm_pixel", *distance], lambda c: c),
        ("AUC: mean accuracy over the eps grid", [c for c in summary.columns if c.startswith("auc_")], lambda c: c[4:]),
        (f"eps50: eps where accuracy falls below {LEVEL:g}", [c for c in summary.columns if c.startswith("eps50_")],
         lambda c: c[6:]),
    ]  # fmt: skip
    tables = []
    for title, columns, header in parts:
        table = Table(title=title)
        table.add_column("model")
        table.add_column("defense")
        for column in columns:
            table.add_column(header(column).replace("_", " "), justify="right")
        for record in summary.to_dict("records"):
            table.add_row(for_console(labels[record["model"]]), for_console(record["defense"]),
                          *(format_number(record[c]) for c in columns))  # fmt: skip
        tables.append(never_cut(table, keep_whole_from=2))
    return tables
