"""`robench report`: results CSVs -> summary.csv, one accuracy-vs-epsilon PNG per attack, report.md/html.

Summary columns, one row per model (weights hash):
    model, defense, dataset, n, seed      n: the fewest test images behind any number in the row;
                                          seed: the evaluation seed
    clean_accuracy                        epsilon = 0 accuracy (the jacobian_norm row's, if present)
    jacobian_norm_normalized              mean exact test ||J||_F in the paper's units, d logits / d
                                          (normalized input) (empty: normalization unknown)
    jacobian_norm_pixel                   mean exact test ||J||_F in pixel units, d logits / d pixel
    jacobian_norm                         the same as jacobian_norm_pixel (its name before units)
    cw_median_distance                    median minimal L2 distance found by CW (inf: most examples
                                          never broken; empty: not run); any other minimization
                                          attack X gets X_median_distance
    auc_<attack>                          area under accuracy vs epsilon (trapezoid rule) divided by
                                          the epsilon range: the mean accuracy over the grid's range,
                                          in [0, 1]. Comparable only between models on the same grid.
    eps50_<attack>                        the epsilon at which accuracy first falls below 0.5,
                                          linearly interpolated between grid points (empty: never)
    flags                                 union of the rows' honesty flags
When a model was evaluated more than once, each attack uses its evaluation with the largest n (then
the one listed last), and of duplicate (attack, epsilon) rows the one listed last: later CSVs win.
Models with the same dataset, architecture and defense label are drawn as one curve, their mean (the
paper's Figure 3 averages 5 seeds this way), shaded with a 95% interval: Student's t over the seeds
for k > 1 models, Clopper-Pearson over the test images for one.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import __version__
from .errors import RobenchError
from .fileio import ensure_writable_dir, write_atomic, write_text_atomic
from .plots import Curve
from .untrusted import for_code_span, for_console, for_markdown, inside, slug
from .results import JACOBIAN_ATTACK, JACOBIAN_ATTACKS, JACOBIAN_NORMALIZED, read_results
from .results.select import curve_order, current_rows, headline, optimality, with_curve_names

NORM_LABELS = {"linf": "L∞", "l2": "L2"}
REQUIRED = ("model", "dataset", "defense", "attack", "norm", "epsilon", "accuracy", "n", "seed", "model_hash")
from .settings import REPORT_FORMATS as FORMATS  # noqa: E402
LEVEL = 0.5  # eps50: where accuracy first drops below this
DISTANCE_ATTACKS = ("cw",)  # always get a median-distance column, even when not run
BAND_KEY = ["dataset", "_arch", "defense"]  # models sharing these are averaged into one curve
CONFIG_IGNORED = ("seed", "device", "data_root")  # may differ between runs averaged into one band


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


def select_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The current rows (latest spec and protocol of each attack, largest n, later rows winning ties),
    with worst-case rows named by their norm (worst_case_linf, worst_case_l2)."""
    return with_curve_names(current_rows(df))


def _by_eps(eps: Any, accuracy: Any) -> tuple[np.ndarray, np.ndarray]:
    eps, accuracy = np.asarray(eps, float), np.asarray(accuracy, float)
    order = np.argsort(eps, kind="stable")
    return eps[order], accuracy[order]


def auc(eps: Any, accuracy: Any) -> float:
    """Trapezoid area under accuracy(eps) over the eps range, divided by the range (so in [0, 1])."""
    eps, accuracy = _by_eps(eps, accuracy)
    if len(eps) < 2 or eps[-1] == eps[0]:
        return math.nan
    return float(np.sum(np.diff(eps) * (accuracy[1:] + accuracy[:-1]) / 2) / (eps[-1] - eps[0]))


def eps_below(eps: Any, accuracy: Any, level: float = LEVEL) -> float:
    """First eps where accuracy falls below `level`, linear between grid points (NaN if it never does)."""
    eps, accuracy = _by_eps(eps, accuracy)
    below = np.flatnonzero(accuracy < level)
    if len(below) == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(eps[0])
    a0, a1 = accuracy[i - 1], accuracy[i]
    return float(eps[i - 1] + (a0 - level) / (a0 - a1) * (eps[i] - eps[i - 1]))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """The summary table (see the module docstring), one row per model, numbers as numbers."""
    rows = headline(select_rows(df))
    attacks = curve_order(a for a in rows["attack"].unique() if a not in JACOBIAN_ATTACKS)
    with_values = {a for a in attacks if rows.loc[rows["attack"] == a, "value"].notna().any()}
    distance_attacks = sorted(set(DISTANCE_ATTACKS) | (with_values - {a for a in attacks if a.startswith("worst_case")}))
    records = []
    for _, group in rows.groupby("model_hash", sort=False):
        first, by_attack = group.iloc[0], dict(tuple(group.groupby("attack")))
        jac, jac_normalized = by_attack.get(JACOBIAN_ATTACK), by_attack.get(JACOBIAN_NORMALIZED)
        zero = group[(group["epsilon"] == 0) & (~group["attack"].isin(JACOBIAN_ATTACKS))].sort_values("attack")
        record = {
            "model": first["model"], "defense": first["defense"], "dataset": first["dataset"],
            "n": int(group["n"].min()), "seed": int(first["seed"]),
            "clean_accuracy": float(jac["accuracy"].iloc[-1]) if jac is not None else
            (float(zero["accuracy"].iloc[0]) if len(zero) else math.nan),
            "jacobian_norm_normalized": float(jac_normalized["value"].iloc[-1]) if jac_normalized is not None
            else math.nan,
            "jacobian_norm_pixel": float(jac["value"].iloc[-1]) if jac is not None else math.nan,
        }  # fmt: skip
        record["jacobian_norm"] = record["jacobian_norm_pixel"]  # its name before units were named
        for attack in distance_attacks:
            values = by_attack[attack]["value"].dropna() if attack in by_attack else pd.Series(dtype=float)
            record[f"{attack}_median_distance"] = float(values.iloc[-1]) if len(values) else math.nan
        for attack in attacks:
            sub = by_attack.get(attack, group.iloc[:0])
            record[f"auc_{attack}"] = auc(sub["epsilon"], sub["accuracy"])
            record[f"eps50_{attack}"] = eps_below(sub["epsilon"], sub["accuracy"]) if len(sub) else math.nan
        for attack in (a for a in attacks if not a.startswith("worst_case")):
            sub = by_attack.get(attack, group.iloc[:0])
            worst = by_attack.get(f"worst_case_{sub['norm'].iloc[0]}") if len(sub) else None
            found = optimality(sub, worst, record["clean_accuracy"]) if worst is not None else {}
            record[f"optimality_{attack}"] = float(np.mean(list(found.values()))) if found else math.nan
        record["flags"] = ";".join(sorted({f for fl in group["flags"] for f in str(fl).split(";") if f}))
        records.append(record)
    return pd.DataFrame(records)


def provenance(model: str) -> dict[str, Any] | None:
    """The run directory's meta.json when the CSV's model column names one that exists, else None."""
    from .checkpoint import META_FILE, read_meta

    try:
        return read_meta(model) if (Path(model) / META_FILE).is_file() else None
    except (RobenchError, OSError):
        return None


def _with_arch(rows: pd.DataFrame, metas: dict[str, dict | None]) -> pd.DataFrame:
    """Add the architecture (column _arch, "" when unknown) and the band key (column _band): models
    share a band only when their training configs differ in the seed (and device) alone; a model
    without a config is a band of its own."""
    def band(model: str, model_hash: str) -> str:
        config = (metas.get(model) or {}).get("config")
        if not isinstance(config, dict):
            return f"model:{model_hash}"
        return json.dumps({k: v for k, v in config.items() if k not in CONFIG_IGNORED}, sort_keys=True, default=str)

    return rows.assign(
        _arch=rows["model"].map(lambda m: (metas.get(m) or {}).get("config", {}).get("model", "")),
        _band=[band(m, h) for m, h in zip(rows["model"], rows["model_hash"])],
    )


def attack_curves(rows: pd.DataFrame, attack: str, metas: dict[str, dict | None]) -> list[Curve]:
    """Per band (same training config but for the seed): the mean accuracy curve, its std for k > 1
    models, and its 95% band: Clopper-Pearson over the test images for one model (the rows'
    ci_low/ci_high), Student's t over the models' accuracies for k > 1 (mean ± t·s/√k)."""
    from scipy import stats

    from .figure_style import paper_label

    sub = _with_arch(rows[rows["attack"] == attack], metas)
    several_archs, several_datasets = sub["_arch"].nunique() > 1, sub["dataset"].nunique() > 1
    curves = []
    groups = sorted(sub.groupby(["dataset", "_arch", "defense", "_band"]),
                    key=lambda item: (item[0][2] != "none", item[0]))  # baseline first  # fmt: skip
    labels = [g[0][2] for g in groups]
    for (dataset, arch_name, defense, _), group in groups:
        table = group.pivot_table(index="model_hash", columns="epsilon", values="accuracy", aggfunc="last")
        table = table.dropna(axis=1)  # epsilons every model of the group was evaluated at
        k = len(table)
        suffix = (f" [{arch_name}]" if several_archs and arch_name else "") + (f" ({dataset})" if several_datasets else "")
        suffix += f" ({k} seeds)" if k > 1 else ""
        if labels.count(defense) > 1 and k == 1:
            suffix += f" ({Path(group['model'].iloc[0]).name or group['model_hash'].iloc[0]})"
        eps, mean = table.columns.to_numpy(float), table.mean(axis=0).to_numpy()
        std = table.std(axis=0, ddof=1).to_numpy() if k > 1 else None
        if k > 1:
            half = stats.t.ppf(0.975, k - 1) * std / math.sqrt(k)
            low, high = np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1)
        else:
            bounds = group.drop_duplicates("epsilon", keep="last").set_index("epsilon")
            low = bounds["ci_low"].reindex(eps).to_numpy(float) if "ci_low" in bounds else None
            high = bounds["ci_high"].reindex(eps).to_numpy(float) if "ci_high" in bounds else None
            if low is None or high is None or np.isnan(low).any() or np.isnan(high).any():
                low = high = None  # rows from before intervals: no band rather than a made-up one
        curves.append(Curve(defense + suffix, eps, mean, std, k, points=table.to_numpy(float), defense=defense,
                            legend=paper_label(defense) + suffix, low=low, high=high))  # fmt: skip
    return curves


def band_caption(curves: list[Curve], trimmed_at: float | None) -> str:
    """What the shading means, for the figure's caption."""
    parts = []
    if any(c.k == 1 and c.low is not None for c in curves):
        parts.append("one model: Clopper-Pearson over the test images")
    if any(c.k > 1 for c in curves):
        parts.append("k seeds: Student's t over the seeds' accuracies (mean ± t·s/√k; points: each seed)")
    text = "Shaded: 95% intervals; " + "; ".join(parts) + "." if parts else ""
    if trimmed_at is not None:
        text += f" Larger ε not shown: every curve is at 0 from ε={trimmed_at:g}."
    return text.strip()


class Comparison(NamedTuple):
    """One defended model (or defense over its seeds) against an undefended one at one ε: `item` from
    `compare_groups` (None for a refusal), and `line`, its sentence in markdown (labels escaped)."""

    model: str
    defense: str
    baseline: str
    item: dict | None
    line: str


def comparisons(paths: list[str | os.PathLike], rows: pd.DataFrame,
                metas: dict[str, dict | None] | None = None) -> list[Comparison]:  # fmt: skip
    """"JR vs none" comparisons (`rows`: current rows, attack names as stored): every defended band (models whose
    training configs differ in the seed alone) against a `none` band of the same dataset, on the worst-case rows
    at every ε > 0 (on every attack's rows when no worst case exists), under `compare`'s matching rule. Two
    single models: the per-image interval, about those models; a band of seeds on either side: the
    interval over seeds and images (`results.seeds`), which needs 3 seeds per side. Outcomes found in
    several files count once. Needs per-example outcomes; rows without them are skipped."""
    from .results import outcomes
    from .results.compare import compare_groups, describe, refusals, unique_outcomes

    frames = []
    for path in paths:
        try:
            frames.append(outcomes(path))
        except RobenchError:
            continue
    frames = [f for f in frames if len(f)]
    if not frames:
        return []
    table = unique_outcomes(pd.concat(frames, ignore_index=True))
    metas = metas if metas is not None else {m: provenance(m) for m in rows["model"].unique()}
    models = _with_arch(rows.drop_duplicates("model_hash"), metas)
    bands = [(dataset, arch, defense, list(g["model_hash"]), list(g["model"]))
             for (dataset, arch, defense, _), g in models.groupby(["dataset", "_arch", "defense", "_band"], sort=False)]  # fmt: skip
    lines = []
    for dataset, arch, defense, hashes, paths_ in (b for b in bands if b[2] != "none"):
        label = defense + (f" ({len(hashes)} seeds)" if len(hashes) > 1 else "")
        bases = sorted((b for b in bands if b[2] == "none" and b[0] == dataset), key=lambda b: b[1] != arch)
        refused = []
        for _, _, base_defense, base_hashes, base_paths in bases:
            base_label = base_defense + (f" ({len(base_hashes)} seeds)" if len(base_hashes) > 1 else "")
            found = compare_groups(rows, table, hashes, base_hashes)
            worst = [c for c in found if c["attack"] == "worst_case" and c["epsilon"] > 0]
            for item in worst or [c for c in found if c["epsilon"] > 0]:
                line = describe(item, for_markdown(label), for_markdown(base_label))
                model = paths_[0] if len(hashes) == 1 else label
                lines.append(Comparison(model, defense, base_paths[0] if len(base_hashes) == 1 else base_label, item, line))
            if found:
                break
            names = {h: Path(m).name or h[:8] for h, m in zip(hashes + base_hashes, paths_ + base_paths)}
            refused += refusals(rows, hashes, base_hashes, names)
        else:
            lines += [Comparison(label, defense, "", None, for_markdown(r)) for r in refused[:1]]
    return lines


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
    context = dict(paths=paths, rows=rows, summary=summary, curves=curves, metas=metas,
                   compared=comparisons(paths, current_rows(df), metas))
    files.append(out / "report.md")
    write_text_atomic(files[-1], render_markdown(**context, images={a: png_name(a) for a in curves}))
    if fmt == "html":
        inlined = {a: "data:image/png;base64," + base64.b64encode((out / png_name(a)).read_bytes()).decode()
                   for a in curves}  # fmt: skip
        files.append(out / "report.html")
        write_text_atomic(files[-1], markdown_to_html(render_markdown(**context, images=inlined)))
    return Report(summary, files)


def _writable_dir(out_dir: str | os.PathLike) -> Path:
    return ensure_writable_dir(out_dir, f"cannot write the report to {out_dir}")


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, (float, np.floating)):
        return "—" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _labels(models: list[str]) -> dict[str, str]:
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
    return _fmt(value).replace("|", "\\|")


def _code(text: Any) -> str:
    """Inline code from data (outside tables)."""
    return f"`{for_code_span(text)}`"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(for_markdown(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows] + [""]


def render_markdown(
    *, paths: list, rows: pd.DataFrame, summary: pd.DataFrame, curves: dict[str, list[Curve]],
    metas: dict[str, dict | None], images: dict[str, str], compared: list[Comparison] = (),
) -> str:  # fmt: skip
    """The report as markdown; `images` maps each attack to its PNG's address (file name or data URI)."""
    labels = _labels(list(summary["model"]))
    lines = [
        "# robench report", "",
        f"From {', '.join(_code(p) for p in paths)}; {len(summary)} models; written "
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
        lines += _table(["model", "defense"] + [f"ε={e:g}" for e in eps], body)
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
    return _table(["model", "defense", "vs"] + [f"ε={e:g} ({norm})" for e in eps], body)


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
        lines += [f"**{for_markdown(title)}**", ""] + _table(["model", "defense"] + [_human(c) for c in columns], body)
    return lines


def _provenance_lines(rows: pd.DataFrame, labels: dict[str, str], metas: dict[str, dict | None]) -> list[str]:
    lines = ["## Provenance", ""]
    for (model, model_hash), group in rows.groupby(["model", "model_hash"], sort=False):
        meta = metas.get(model)
        lines += [f"### {_code(labels.get(model, model))}", "", f"- path {_code(model)}, weights sha256 {_code(model_hash)}"]
        if meta is None:
            lines.append("- training: provenance unavailable (no run directory with meta.json at this path)")
        else:
            config = meta["config"]
            flags = ", ".join(f"{k}={v}" for k, v in config.items())
            lines += [
                "- " + for_markdown(f"training seed {config.get('seed')}; defense {meta.get('defense', '?')}; "
                                    f"robench {meta.get('robench_version', '?')}; torch "
                                    f"{meta.get('versions', {}).get('torch', '?')}"),
                f"- training flags: {_code(flags)}",
            ]  # fmt: skip
        evals = sorted({str(v) for v in group["robench_version"].dropna()})
        lines.append(f"- evaluated by robench {for_markdown(', '.join(evals) or '?')}:")
        for attack, n, seed, params in group.drop_duplicates("attack", keep="last")[
            ["attack", "n", "seed", "attack_params"]
        ].values:  # fmt: skip
            lines.append(f"  - {for_markdown(attack)} on n={int(n)} test images, seed {int(seed)}: {_code(params)}")
        lines.append("")
    return lines + _band_notes(rows, metas)


def _band_notes(rows: pd.DataFrame, metas: dict[str, dict | None]) -> list[str]:
    """Warn when models averaged into one band differ in more than their seed."""
    notes = []
    for (_, _, defense), group in _with_arch(rows.drop_duplicates("model_hash"), metas).groupby(BAND_KEY):
        configs = [(metas.get(m) or {}).get("config") for m in group["model"]]
        if len(configs) < 2 or any(c is None for c in configs):
            continue
        keys = sorted({k for c in configs for k in c} - set(CONFIG_IGNORED))
        differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        if differ:
            notes.append(f"- Models labelled {_code(defense)} differ in more than their seed ({for_markdown(', '.join(differ))}): "
                         "their band mixes training recipes.")  # fmt: skip
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


def summary_tables(summary: pd.DataFrame) -> list[Any]:
    """The summary as rich tables for the terminal: clean metrics, then AUC and eps50 per attack.

    Three narrow tables rather than one wide one, so they stay readable in an 80-column terminal.
    """
    from rich.table import Table

    from .tables import never_cut

    labels = _labels(list(summary["model"]))
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
                          *(_fmt(record[c]) for c in columns))  # fmt: skip
        tables.append(never_cut(table, keep_whole_from=2))
    return tables
