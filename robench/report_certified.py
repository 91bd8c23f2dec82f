"""The report's "Certified beside attacked" section: where a study has certification rows (certify-ibp,
certify-crown, verify-milp), each model's robust accuracy is drawn as a band, from the best proven lower
bound (certified) up to the worst case over attacks (an upper bound): the true robust accuracy lies
inside it. The table gives both ends per ε, the certification that gave the lower end, the share of
examples left unknown by it, and the share whose robustness verify-milp decided exactly.

Why a band: an attack's robust accuracy only says what the attacks did not break. A defense whose band
is narrow has a number that cannot move much under stronger attacks; a wide band says how much is not known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CERTIFIED_PNG = "certified.png"


def certified_rows(rows: pd.DataFrame, relations: dict | None = None) -> pd.DataFrame:
    """The rows of certifications (`role = "certified"` in their spec)."""
    from .attacks import relations as spec_relations
    from .check_rows import _relation

    relations = spec_relations() if relations is None else relations
    return rows[rows["attack"].map(lambda a: _relation(relations, a).role == "certified")]


def bands(rows: pd.DataFrame, relations: dict | None = None) -> pd.DataFrame:
    """One row per (model, norm, ε) that has both ends: certified (best certification and its name),
    its unknown share, verify-milp's decided share (where it ran), worst case; sorted by model and ε."""
    certified = certified_rows(rows, relations)
    if certified.empty:
        return pd.DataFrame()
    keyed = rows.assign(_eps=rows["epsilon"].astype(float).round(12))
    worst = keyed[keyed["attack"].str.startswith("worst_case")]
    out = []
    for (model, norm, eps), group in certified.assign(_eps=certified["epsilon"].astype(float).round(12)).groupby(
            ["model", "norm", "_eps"], sort=False):  # fmt: skip
        upper = worst[(worst["model"] == model) & (worst["norm"] == norm) & (worst["_eps"] == eps)]
        if upper.empty and eps > 0:
            continue
        best = group.loc[group["accuracy"].idxmax()]
        milp = group[group["attack"] == "verify-milp"]
        out.append({
            "model": model, "defense": best["defense"], "norm": norm, "epsilon": eps,
            "certified": float(best["accuracy"]), "by": best["attack"], "unknown": float(best["value"]),
            "decided_exactly": float(1 - milp["value"].iloc[-1]) if len(milp) else np.nan,
            "worst_case": float(upper["accuracy"].iloc[-1]) if len(upper) else float(best["accuracy"]),
        })  # fmt: skip
    return pd.DataFrame(out).sort_values(["model", "epsilon"], kind="stable").reset_index(drop=True) if out else pd.DataFrame()


def band_figure(table: pd.DataFrame, labels: dict[str, str]) -> Any:
    """Per model, the band from certified (lower, dashed) to worst case (upper, solid), shaded."""
    from matplotlib import rc_context

    from .figure_style import RC_PARAMS, defense_style
    from .plots import new_figure
    from .untrusted import for_figure

    with rc_context(RC_PARAMS):
        fig = new_figure()
        ax = fig.add_subplot()
        for index, (model, group) in enumerate(table.groupby("model", sort=False)):
            style = defense_style(group["defense"].iloc[0]) if group["defense"].iloc[0] else {"color": f"C{index % 10}"}
            color = style.get("color", f"C{index % 10}")
            eps = group["epsilon"].to_numpy()
            ax.plot(eps, 100 * group["worst_case"], color=color, label=for_figure(f"{labels.get(model, model)}: worst case"))
            ax.plot(eps, 100 * group["certified"], color=color, ls="--", label=for_figure(f"{labels.get(model, model)}: certified"))
            ax.fill_between(eps, 100 * group["certified"], 100 * group["worst_case"], color=color, alpha=0.15, lw=0)
        norms = sorted(table["norm"].unique())
        ax.set_xlabel(for_figure(f"ε ({'/'.join(norms)}, pixel scale [0, 1])"))
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title("Robust accuracy lies in the band: certified (proved) to worst case (attacked)")
        ax.legend(loc="best", fontsize=7)
        fig.tight_layout()
    return fig


def certified_markdown(table: pd.DataFrame, labels: dict[str, str], image: str) -> list[str]:
    """The section's markdown: the figure and one table row per (model, ε)."""
    from .report_markdown import Code, markdown_table

    if table.empty:
        return []
    lines = ["## Certified beside attacked", "",
             "The true robust accuracy lies between a proven lower bound (the best certification: certify-ibp, "
             "certify-crown or verify-milp; an example counts only when proved robust, unknown counts as not) and "
             "the worst case over attacks (what no attack broke). unknown: the share the certification could not "
             "decide; decided exactly: the share verify-milp proved robust or broke with a re-checked "
             "counterexample within its time limit.", "", f"![certified band]({image})", ""]  # fmt: skip
    body = [[Code(labels.get(r.model, r.model)), str(r.defense), f"{r.epsilon:g}", r.certified, str(r.by), r.unknown,
             r.worst_case, r.worst_case - r.certified, r.decided_exactly] for r in table.itertuples()]  # fmt: skip
    return lines + markdown_table(["model", "defense", "ε", "certified", "by", "unknown", "worst case", "gap",
                                   "decided exactly"], body)  # fmt: skip


def write_certified(rows: pd.DataFrame, out: Path, formats: tuple[str, ...], labels: dict[str, str]) -> tuple[list[Path], pd.DataFrame]:
    """The band figure's files and the band table (both empty without certification rows)."""
    from .plots import save_figure

    table = bands(rows)
    if table.empty:
        return [], table
    fig = band_figure(table, labels)
    files = []
    for figure_format in formats:
        files.append(out / (CERTIFIED_PNG[: -len(".png")] + "." + figure_format))
        save_figure(fig, files[-1], figure_format)
    return files, table
