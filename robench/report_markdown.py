"""The report's text: report.md, and the same text as one self-contained HTML page.

Every label, path and name shown here comes from data (a CSV cell, a run directory), so each goes
through `robench.untrusted` on its way into markdown: a table cell shows its value literally, a code
span cannot be closed early, and the HTML page renders no raw HTML and references nothing outside
itself. The numbers come from `robench.summary` and `robench.bands`; nothing here computes one.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .bands import BAND_KEY, CONFIG_IGNORED, Comparison, with_bands
from .plots import Curve
from .summary import LEVEL
from .untrusted import for_code_span, for_markdown


def format_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, (float, np.floating)):
        return "—" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def short_labels(models: list[str]) -> dict[str, str]:
    """Short names: the run directory's name, unless two models would share it."""
    short = {m: Path(m).name or m for m in models}
    return {m: s if list(short.values()).count(s) == 1 else m for m, s in short.items()}


class Code(str):
    """A table cell shown as a code span (model names, paths); every other string cell is plain text."""


class Bold(str):
    """A table cell of robench's own text, shown in bold."""


def _cell(value: Any) -> str:
    """A markdown table cell that shows `value` literally, whatever characters it holds."""
    if isinstance(value, Code):
        return f"`{for_code_span(value)}`".replace("|", "\\|")
    if isinstance(value, Bold):
        return f"**{for_markdown(value)}**"
    if isinstance(value, str):
        return for_markdown(value)
    return format_number(value).replace("|", "\\|")


def code_span(text: Any) -> str:
    """Inline code from data (outside tables)."""
    return f"`{for_code_span(text)}`"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(for_markdown(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows] + [""]


def render_markdown(
    *, paths: list, rows: pd.DataFrame, summary: pd.DataFrame, curves: dict[str, list[Curve]],
    metas: dict[str, dict | None], images: dict[str, str], compared: list[Comparison] = (),
    certified: pd.DataFrame | None = None, certified_image: str = "",
) -> str:  # fmt: skip
    """The report as markdown; `images` maps each attack to its PNG's address (file name or data URI), and
    `certified_image` the certified band's (`robench.report_certified`, with its table `certified`)."""
    labels = short_labels(list(summary["model"]))
    lines = [
        "# robench report", "",
        f"From {', '.join(code_span(p) for p in paths)}; {len(summary)} models; written "
        f"{time.strftime('%Y-%m-%d %H:%M')} by robench {__version__}.", "",
    ]  # fmt: skip
    if compared:
        lines += ["## Did the defense help?", "",
                  "Each defended model against the undefended one on the same test images (same attack spec, n, "
                  "evaluation seed and protocol): the difference in robust accuracy (worst case over attacks where "
                  "one exists) in percentage points, with its 95% interval. Two single models: Newcombe's method 10 "
                  "over the images, about those two models. Models that differ only in their training seed are "
                  "compared as a defense: the interval over seeds and images (two-level bootstrap), which needs 3 "
                  "seeds per side; with fewer, the interval is over images only and seed variation is not measured. "
                  "**Bold** where the interval excludes 0 (never for a defense with fewer than 3 seeds).", ""]  # fmt: skip
        measured = [c for c in compared if c.item is not None]
        lines += headline_table(measured, labels) if measured else []
        lines += ["### Each comparison, with its p-value", ""]
        lines += [f"- {c.line}" for c in compared] + [""]  # labels escaped in `comparisons`
    from .trust_report import trust_section

    lines += trust_section(rows, labels)
    if certified is not None and len(certified):
        from .report_certified import certified_markdown

        lines += certified_markdown(certified, labels, certified_image, rows)
    lines += [
        "## Summary", "",
        "Three narrow tables, so each fits a page. AUC: the mean accuracy over the attack's ε grid "
        "(area under accuracy vs ε by the trapezoid rule, divided by the ε range; compare models on the "
        f"same grid only). ε50: the ε where accuracy first falls below {LEVEL:g} (interpolated); "
        "\"> x\" where it never does up to the grid's largest ε x; — where the attack was not run. The worst "
        "case over every adversarial attack of a norm is the robust accuracy robench stands behind; every "
        "accuracy has its 95% Clopper-Pearson interval in the results CSV (`ci_low`, `ci_high`). The "
        "same numbers, with machine-readable column names, are in summary.csv.", "",
    ]  # fmt: skip
    lines += summary_markdown(summary, rows, labels)
    for attack, attack_curves_ in curves.items():
        sub = rows[rows["attack"] == attack]
        eps = sorted(sub["epsilon"].unique())
        name = for_markdown(f"{attack} ({sub['norm'].iloc[0]})")
        lines += [f"## {name}", "", f"![{for_markdown(attack)}]({images[attack]})", ""]
        body = []
        for model, group in sub.groupby("model", sort=False):
            by_eps = dict(zip(group["epsilon"], group["accuracy"]))
            body.append([Code(labels.get(model, model)), str(group["defense"].iloc[0])]
                        + [by_eps.get(e, math.nan) for e in eps])  # fmt: skip
        for curve in (c for c in attack_curves_ if c.k > 1):
            cells = dict(zip(curve.eps, (f"{m:.3f} ± {s:.3f}" for m, s in zip(curve.mean, curve.std))))
            body.append([f"mean of {curve.k}", curve.label] + [cells.get(e, "—") for e in eps])
        lines += markdown_table(["model", "defense"] + [f"ε={e:g}" for e in eps], body)
    return "\n".join(lines + _provenance_lines(rows, labels, metas))


def headline_table(compared: list[Comparison], labels: dict[str, str]) -> list[str]:
    """The comparisons as one table: a row per (defended model, baseline), a column per ε."""
    from .figure_style import NORM_SYMBOLS, paper_label

    eps = sorted({c.item["epsilon"] for c in compared})
    norms = sorted({c.item["norm"] for c in compared})
    cells: dict[tuple[str, str], dict[float, str]] = {}
    for c in compared:
        text = f"{100 * c.item['difference']:+.1f} [{100 * c.item['low']:.1f}, {100 * c.item['high']:.1f}]"
        excludes_zero = (c.item["low"] > 0 or c.item["high"] < 0) and not c.item.get("seeds_note")
        cells.setdefault((c.model, c.baseline), {})[c.item["epsilon"]] = Bold(text) if excludes_zero else text
    defenses = {c.model: c.defense for c in compared}
    body = [[Code(labels.get(model, model)), paper_label(defenses[model]), Code(labels.get(base, base))]
            + [by_eps.get(e, "—") for e in eps] for (model, base), by_eps in cells.items()]  # fmt: skip
    norm = "/".join(NORM_SYMBOLS.get(n, n) for n in norms)
    return markdown_table(["model", "defense", "vs"] + [f"ε={e:g} ({norm})" for e in eps], body)


def _human(column: str) -> str:
    """summary.csv's column name as a table header: auc_worst_case_linf -> 'worst case L∞'."""
    from .figure_style import NORM_SYMBOLS, attack_name

    for prefix in ("auc_", "eps50_"):
        if column.startswith(prefix):
            attack = column[len(prefix):]
            if attack.startswith("worst_case_"):
                return f"worst case {NORM_SYMBOLS.get(attack[len('worst_case_'):], '')}".strip()
            return attack_name(attack)
    return {"clean_accuracy": "clean accuracy", "jacobian_norm_normalized": "‖J‖_F normalized",
            "jacobian_norm_pixel": "‖J‖_F pixel", "cw_median_distance": "CW median L2 distance",
            "n": "n", "dataset": "dataset"}.get(column, column.replace("_", " "))  # fmt: skip


def summary_markdown(summary: pd.DataFrame, rows: pd.DataFrame, labels: dict[str, str]) -> list[str]:
    """The summary as three narrow markdown tables (clean metrics, AUC, ε50) with readable headers;
    an ε50 never reached reads "> largest ε" rather than "—", which means "not run"."""
    from .figure_style import paper_label

    clean = [c for c in ("clean_accuracy", "jacobian_norm_normalized", "jacobian_norm_pixel", "cw_median_distance")
             if c in summary.columns and (c != "cw_median_distance" or summary[c].notna().any())]  # fmt: skip
    aucs = [c for c in summary.columns if c.startswith("auc_")]
    eps50s = [c for c in summary.columns if c.startswith("eps50_")]
    largest = rows.groupby(["model", "attack"])["epsilon"].max().to_dict()

    def eps50(record: dict, column: str) -> Any:
        value, attack = record[column], column[len("eps50_"):]
        if isinstance(value, float) and math.isnan(value) and not math.isnan(record.get(f"auc_{attack}", math.nan)):
            return f"> {largest.get((record['model'], attack), math.nan):g}"
        return value

    lines = []
    for title, columns, cell in (("Clean accuracy and ‖J‖_F (mean exact test Frobenius norm; normalized: the "
                                  "paper's units, d logits / d normalized input; pixel: d logits / d pixel)", clean,
                                  lambda r, c: r[c]),
                                 ("AUC: mean accuracy over the ε grid", aucs, lambda r, c: r[c]),
                                 (f"ε50: ε where accuracy falls below {LEVEL:g}", eps50s, eps50)):  # fmt: skip
        if not columns:
            continue
        body = [[Code(labels[r["model"]]), paper_label(r["defense"])] + [cell(r, c) for c in columns]
                for r in summary.to_dict("records")]  # fmt: skip
        header = ["model", "defense"] + [_human(c) for c in columns]
        lines += [f"**{for_markdown(title)}**", ""] + markdown_table(header, body)
    return lines


def _provenance_lines(rows: pd.DataFrame, labels: dict[str, str], metas: dict[str, dict | None]) -> list[str]:
    lines = ["## Provenance", ""]
    for (model, model_hash), group in rows.groupby(["model", "model_hash"], sort=False):
        meta = metas.get(model)
        lines += [f"### {code_span(labels.get(model, model))}", "",
                  f"- path {code_span(model)}, weights sha256 {code_span(model_hash)}"]  # fmt: skip
        if meta is None:
            lines.append("- training: provenance unavailable (no run directory with meta.json at this path)")
        else:
            config = meta["config"]
            flags = ", ".join(f"{k}={v}" for k, v in config.items())
            lines += [
                "- " + for_markdown(f"training seed {config.get('seed')}; defense {meta.get('defense', '?')}; "
                                    f"robench {meta.get('robench_version', '?')}; torch "
                                    f"{meta.get('versions', {}).get('torch', '?')}"),
                f"- training flags: {code_span(flags)}",
            ]  # fmt: skip
        evals = sorted({str(v) for v in group["robench_version"].dropna()})
        lines.append(f"- evaluated by robench {for_markdown(', '.join(evals) or '?')}:")
        for attack, n, seed, params in group.drop_duplicates("attack", keep="last")[
            ["attack", "n", "seed", "attack_params"]
        ].values:  # fmt: skip
            lines.append(f"  - {for_markdown(attack)} on n={int(n)} test images, seed {int(seed)}: {code_span(params)}")
        lines.append("")
    return lines + _band_notes(rows, metas)


def _band_notes(rows: pd.DataFrame, metas: dict[str, dict | None]) -> list[str]:
    """Warn when models averaged into one band differ in more than their seed."""
    notes = []
    for (_, _, defense), group in with_bands(rows.drop_duplicates("model_hash"), metas).groupby(BAND_KEY):
        configs = [(metas.get(m) or {}).get("config") for m in group["model"]]
        if len(configs) < 2 or any(c is None for c in configs):
            continue
        keys = sorted({k for c in configs for k in c} - set(CONFIG_IGNORED))
        differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        if differ:
            notes.append(f"- Models labelled {code_span(defense)} differ in more than their seed "
                         f"({for_markdown(', '.join(differ))}): their band mixes training recipes.")  # fmt: skip
    return (["## Notes", ""] + notes + [""]) if notes else []


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 6px}
th{background:#f0f0f0}img{max-width:100%}code{background:#f5f5f5;padding:0 2px;word-break:break-all}"""


def markdown_to_html(markdown: str, title: str = "robench report") -> str:
    """One self-contained HTML page: inline CSS, raw HTML in the text escaped, no external references."""
    from markdown_it import MarkdownIt  # ships with rich

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}</body></html>\n")  # fmt: skip
