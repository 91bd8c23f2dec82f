"""Bands: models trained by one recipe but for the seed, drawn as one curve and compared as one defense.

The paper's Figure 3 averages 5 seeds per defense; robench decides which models to average from the
training config in each run directory's meta.json (`provenance`), never from labels alone, so that two
recipes that share a defense label are not mixed. Each band's curve is the models' mean, shaded with a
95% interval: Student's t over the seeds for k > 1 models, Clopper-Pearson over the test images for one.
The "did the defense help?" comparisons pair each defended band with an undefended one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .errors import RobenchError
from .plots import Curve
from .untrusted import for_markdown

BAND_KEY = ["dataset", "_arch", "defense"]  # models sharing these are averaged into one curve
CONFIG_IGNORED = ("seed", "device", "data_root")  # may differ between runs averaged into one band


def provenance(model: str) -> dict[str, Any] | None:
    """The run directory's meta.json when the CSV's model column names one that exists, else None."""
    from .checkpoint import META_FILE, read_meta

    try:
        return read_meta(model) if (Path(model) / META_FILE).is_file() else None
    except (RobenchError, OSError):
        return None


def with_bands(rows: pd.DataFrame, metas: dict[str, dict | None]) -> pd.DataFrame:
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

    sub = with_bands(rows[rows["attack"] == attack], metas)
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
    models = with_bands(rows.drop_duplicates("model_hash"), metas)
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
