"""Print docs/RESULTS.md's "JR against the modern baselines" table from a reproduce study directory.

    .venv/bin/python docs/modern_table.py results/modern-15

Every number comes from the study's files: runs/*/meta.json (clean accuracy on the full test set,
mean exact ||J||_F on the first 1,000 test images, training seconds) and results.csv (the worst case
over the L-inf attacks and over the L2 attacks, with 95% Clopper-Pearson intervals).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robench.figure_style import paper_label
from robench.results import read_results
from robench.results.select import current_rows, headline, with_curve_names

POINTS = (("worst_case_linf", 0.1), ("worst_case_linf", 0.3), ("worst_case_l2", 1.5), ("worst_case_l2", 2.0))


def main() -> None:
    study = Path(sys.argv[1])
    rows = headline(with_curve_names(current_rows(read_results(study / "results.csv"))))
    metas = {p.parent.name: json.loads(p.read_text()) for p in sorted((study / "runs").glob("*/meta.json"))}
    plain = next(m["train_seconds"] for m in metas.values() if m["defense"] == "none")
    header = ["defense", "clean acc. (%)", "‖J‖_F normalized"] + [
        f"{'L∞' if a.endswith('linf') else 'L2'} ε={e:g}" for a, e in POINTS] + ["train time × plain"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, meta in metas.items():
        model_rows = rows[rows["model"].str.endswith(f"runs/{name}")]
        cells = []
        for attack, eps in POINTS:
            # one attack of a norm has no worst-case row of its own: then the attack is the worst case
            single = {"worst_case_linf": "pgd", "worst_case_l2": "pgd-l2"}[attack]
            name_ = attack if (model_rows["attack"] == attack).any() else single
            hit = model_rows[(model_rows["attack"] == name_) & ((model_rows["epsilon"] - eps).abs() < 1e-9)]
            if len(hit):
                r = hit.iloc[-1]
                cells.append(f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]")
            else:
                cells.append("—")
        m = meta["metrics"]
        print(f"| {paper_label(meta['defense'])} | {100 * m['test_accuracy']:.2f} | "
              f"{m['test_jacobian_norm_normalized']:.2f} | " + " | ".join(cells) +
              f" | {meta['train_seconds'] / plain:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
