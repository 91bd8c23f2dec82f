"""The report's "Can this evaluation be trusted?" section: every flag raised on a model's rows, grouped
per model and flag, with what it means for the number, and what robench measured on each model before
attacking it (`robench.model_probes`), so that a section with nothing flagged still says what was checked.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .checks import TRUST_FLAGS
from .model_probes import from_json
from .report_markdown import Code, markdown_table

# What the older honesty checks (robench.checks) mean for the number, in the same voice as TRUST_FLAGS.
HONESTY_FLAGS = {
    "rises_with_eps": "accuracy rises with ε: an attack failed at the larger ε",
    "above_clean": "an attack left more examples correct than the clean model has: a bug or a random model",
    "noise_stronger_than_adversarial": "random noise did better than the attack: masked gradients or a mis-set attack",
    "above_grey_share": "more robust than moving every image to grey allows: the iterative attack failed",
    "one_class_for_every_input": "the model predicts one class for every input: its 'robustness' is a class share",
    "weaker_than_worst_case": "this attack alone understates the threat: report the worst case",
}


def meaning(flag: str) -> str:
    if flag in TRUST_FLAGS:
        return TRUST_FLAGS[flag]
    if flag in HONESTY_FLAGS:
        return HONESTY_FLAGS[flag]
    if "_weaker_than_" in flag:
        strong, weak = flag.split("_weaker_than_", 1)
        return f"{strong} ended weaker than {weak}, which its spec says it must beat: the attack is mis-set"
    return "see robench.checks"


def probe_summary(probes: dict[str, Any] | None) -> str:
    """One line of what was measured on the model (or that nothing was: rows from before the probes)."""
    if probes is None:
        return "not measured (rows written before robench probed models)"
    parts = [
        "random outputs" if probes.get("randomized") else "deterministic outputs",
        f"{float(probes.get('zero_gradient_share') or 0):.0%} zero input gradients",
        "probabilities" if probes.get("probabilities") else "logits",
        f"{probes.get('classes')} classes",
        f"autograd in forward ({probes.get('gradient_in_forward')} calls)" if probes.get("gradient_in_forward")
        else "no autograd in forward",
    ]  # fmt: skip
    return f"{', '.join(parts)} (first {probes.get('n')} test images)"


def trust_section(rows: pd.DataFrame, labels: dict[str, str]) -> list[str]:
    """Markdown lines of the section, for the rows the report shows."""
    lines = ["## Can this evaluation be trusted?", "",
             "AutoAttack's checks (Croce & Hein 2020: randomness, zero gradients, probabilities for logits, class "
             "count, autograd inside the forward pass, a black-box attack breaking what the gradient attacks left), "
             "the indicators of attack failure read from each gradient attack's own path (Pintor et al. 2022: silent "
             "success, unavailable gradients, incomplete optimization, non-convergence) and robench's honesty "
             "checks, on every row. A flagged number can be too high (a robust accuracy is an "
             "upper bound that only a strong attack makes tight): read the flag before the number.", ""]  # fmt: skip
    flagged, probed = [], []
    for model, group in rows.groupby("model", sort=False):
        probes = [p for p in map(from_json, group.get("model_checks", pd.Series(dtype=object))) if p is not None]
        probed.append([Code(labels.get(model, model)), probe_summary(probes[-1] if probes else None)])
        by_flag: dict[str, list[str]] = {}
        for attack, eps, cell in zip(group["attack"], group["epsilon"], group["flags"]):
            for flag in (f for f in str(cell).split(";") if f):
                by_flag.setdefault(flag, []).append(f"{attack} ε={float(eps):g}")
        for flag, where in by_flag.items():
            attacks = list(dict.fromkeys(w.split(" ε=")[0] for w in where))
            shown = ", ".join(attacks[:4]) + (f" and {len(attacks) - 4} more" if len(attacks) > 4 else "")
            flagged.append([Code(labels.get(model, model)), Code(flag), f"{len(where)} ({shown})", meaning(flag)])
    if flagged:
        lines += markdown_table(["model", "flag", "rows", "what it means for the number"], flagged)
    else:
        lines += ["No check fired on any model.", ""]
    lines += ["What robench measured on each model before attacking it:", ""]
    lines += markdown_table(["model", "measured"], probed)
    return lines
