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
        if upper.empty:  # no worst case (fewer than two attacks of that norm): no band
            continue
        best = group.loc[group["accuracy"].idxmax()]
        milp = group[group["attack"] == "verify-milp"]
        out.append({
            "model": model, "defense": best["defense"], "norm": norm, "epsilon": eps,
            "certified": float(best["accuracy"]), "by": best["attack"],
            "unknown": float(best["value"]) if best["attack"] != "certify-radius" else np.nan,  # its value: a radius
            "decided_exactly": float(1 - milp["value"].iloc[-1]) if len(milp) else np.nan,
            "worst_case": float(upper["accuracy"].iloc[-1]),
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


def radius_bracket(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model with `certify-radius` rows: its median certified radius and the median minimal adversarial
    distances of CW and DDN in the same norm (certified radius <= true distance <= attacked distance)."""
    radius = rows[rows["attack"] == "certify-radius"]
    out = []
    for model, group in radius.groupby("model", sort=False):
        norm = group["norm"].iloc[-1]
        record = {"model": model, "defense": group["defense"].iloc[-1], "norm": norm,
                  "certified_radius": float(group["value"].iloc[-1])}  # fmt: skip
        for attack in ("cw", "ddn"):
            found = rows[(rows["model"] == model) & (rows["attack"] == attack) & (rows["norm"] == norm)]
            record[attack] = float(found["value"].iloc[-1]) if len(found) else np.nan
        out.append(record)
    return pd.DataFrame(out)


def certified_markdown(table: pd.DataFrame, labels: dict[str, str], image: str,
                       rows: pd.DataFrame | None = None) -> list[str]:  # fmt: skip
    """The section's markdown: the figure, one table row per (model, ε), and the radius bracket."""
    from .report_markdown import Code, markdown_table

    if table.empty:
        return []
    bracket = radius_bracket(rows) if rows is not None else pd.DataFrame()
    radius_lines = [] if bracket.empty else [
        "### Radius bracket", "",
        "Median over the test images of the certified radius (certify-radius: a proven lower bound of the distance "
        "to the decision boundary) and of the minimal adversarial distance CW and DDN found (an upper bound of "
        "the same distance).", "",
    ] + markdown_table(["model", "defense", "norm", "certified radius", "CW distance", "DDN distance"], [
        [Code(labels.get(r.model, r.model)), str(r.defense), str(r.norm), r.certified_radius, r.cw, r.ddn]
        for r in bracket.itertuples()])  # fmt: skip
    lines = ["## Certified beside attacked", "",
             "The true robust accuracy lies between a proven lower bound (the best certification: certify-ibp, "
             "certify-crown or verify-milp; an example counts only when proved robust, unknown counts as not) and "
             "the worst case over attacks (what no attack broke). unknown: the share the certification could not "
             "decide; decided exactly: the share verify-milp proved robust or broke with a re-checked "
             "counterexample within its time limit.", "", f"![certified band]({image})", ""]  # fmt: skip
    body = [[Code(labels.get(r.model, r.model)), str(r.defense), str(r.norm), f"{r.epsilon:g}", r.certified, str(r.by),
             r.unknown, r.worst_case, r.worst_case - r.certified, r.decided_exactly] for r in table.itertuples()]  # fmt: skip
    return lines + markdown_table(["model", "defense", "norm", "ε", "certified", "by", "unknown", "worst case", "gap",
                                   "decided exactly"], body) + radius_lines  # fmt: skip


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
