"""Print the markdown tables of docs/RESULTS.md from a `robench reproduce mnist` study directory.

    .venv/bin/python docs/results_tables.py results/reproduce-cpu-12 [--figures docs/figures/reproduce-cpu-12]

Every number comes from the study's own files: claims.md, runs/*/meta.json (clean accuracy on the full
test set, mean exact ||J||_F on the first 1,000 test images in both units), results.csv (robust
accuracy, mean ± sample std over seeds) and timings.json. --figures copies the report's PNGs.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from robench.reproduce import ALIASES, PAPER_DEFENSES
from robench.results import read_results
from robench.results.select import current_rows, headline, with_curve_names

PAPER = {"none": (98.9, 32.9), "l2": (99.2, 4.6), "dropout": (98.6, 21.5), "jr": (99.0, 1.1), "all": (99.1, 1.2)}


def _pm(values, digits=2, scale=1.0):
    values = np.asarray(values, float) * scale
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def runs_of(study: Path, defense: str) -> list[Path]:
    name = ALIASES.get(defense, defense)
    return sorted(p for p in (study / "runs").glob(f"{name}-s*") if (p / "meta.json").is_file())


def table_one(study: Path) -> list[str]:
    lines = ["| defense | recipe | clean test acc. (%) | paper | ‖J‖_F normalized | paper ‖J‖_F | ‖J‖_F pixel | train s per run |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for defense in PAPER_DEFENSES:
        metas = [json.loads((run / "meta.json").read_text()) for run in runs_of(study, defense)]
        if not metas:
            continue
        m = [meta["metrics"] for meta in metas]
        acc, paper_j = PAPER.get(defense, ("—", "—"))
        lines.append(
            f"| {defense} | `{metas[0]['defense']}` | {_pm([x['test_accuracy'] for x in m], 2, 100)} | {acc} | "
            f"{_pm([x['test_jacobian_norm_normalized'] for x in m])} | {paper_j} | "
            f"{_pm([x['test_jacobian_norm_pixel'] for x in m])} | {_pm([meta['train_seconds'] for meta in metas], 0)} |"
        )
    return lines + [""]


def curves(study: Path) -> list[str]:
    rows = headline(with_curve_names(current_rows(read_results(study / "results.csv"))))
    hashes = {}
    for defense in PAPER_DEFENSES:
        from robench.sources import file_hash

        hashes[defense] = [file_hash(run / "model.safetensors") for run in runs_of(study, defense)]
    lines = []
    for attack in [a for a in rows["attack"].unique() if not a.startswith("jacobian_norm")]:
        sub = rows[rows["attack"] == attack]
        eps = sorted(sub["epsilon"].unique())
        n = int(sub["n"].max())
        lines += [f"**{attack}** ({sub['norm'].iloc[0]}, n={n} test images, mean ± std over seeds):", "",
                  "| defense | " + " | ".join(f"ε={e:g}" for e in eps) + " |", "|---|" + "---|" * len(eps)]
        for defense in PAPER_DEFENSES:
            if defense == "all":
                continue  # the same models as base+jr
            mine = sub[sub["model_hash"].isin(hashes[defense])]
            if mine.empty:
                continue
            cells = []
            for e in eps:
                values = mine[np.isclose(mine["epsilon"], e)]["accuracy"].to_numpy()
                cells.append(_pm(values, 3) if len(values) else "—")
            lines.append(f"| {defense} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--figures", type=Path, default=None)
    args = parser.parse_args()
    claims = (args.study / "claims.md").read_text().split("\n", 2)[2]
    timings = json.loads((args.study / "timings.json").read_text())
    print(claims)
    print("\n".join(table_one(args.study)))
    print("\n".join(curves(args.study)))
    print(f"timings (this invocation): {json.dumps(timings)}")
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for png in (args.study / "report").glob("*.png"):
            shutil.copy(png, args.figures / png.name)


if __name__ == "__main__":
    main()
