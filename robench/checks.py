"""Honesty checks on a results table: signs of gradient masking or a mis-set attack.

In the spirit of AutoAttack's checks, these are output, not errors: a flagged row is a number the
reader should not trust without a second look. Each check is a small function in `CHECKS` that looks
at one model's rows and returns {row index: why}; adding a check is adding an entry, not a branch.
The table needs the columns model, attack, norm, epsilon, accuracy (and n); rows of the
pseudo-attack "jacobian_norm" are ignored. Pure pandas: no Foolbox, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import pandas as pd

from .errors import RobenchError

REQUIRED_COLUMNS = ("model", "attack", "norm", "epsilon", "accuracy")
IGNORED_ATTACKS = ("jacobian_norm",)
NOISE = "noise"  # not an adversary: a baseline every adversarial attack must beat
STRONGER_THAN = (("pgd", "fgsm"),)  # (attack, attack it must never be weaker than) at equal ε
GREY_EPS = 0.5  # at L∞ ε >= 0.5 every [0, 1] image can be moved to the all-grey image
EPS_DECIMALS = 9  # ε read back from CSV is compared after rounding

Findings = dict[Hashable, str]  # row index -> reason


@dataclass(frozen=True)
class Check:
    """One named check: `find(rows_of_one_model, tolerance)` -> {row index: reason}."""

    name: str
    find: Callable[[pd.DataFrame, float], Findings]


def _eps_key(rows: pd.DataFrame) -> pd.Series:
    return rows["epsilon"].astype(float).round(EPS_DECIMALS)


def _rises_with_eps(rows: pd.DataFrame, tol: float) -> Findings:
    """A stronger attack (larger ε) can only do at least as well: accuracy must not rise with ε."""
    found = {}
    for _, attack_rows in rows.groupby(["attack", "norm"], sort=False):
        ordered = attack_rows.assign(_eps=_eps_key(attack_rows)).sort_values("_eps", kind="stable")
        lowest = ordered.groupby("_eps")["accuracy"].min().cummin().shift()  # best below each ε
        for idx, eps, acc in zip(ordered.index, ordered["_eps"], ordered["accuracy"]):
            before = lowest.get(eps)
            if pd.notna(before) and acc > before + tol:
                found[idx] = f"accuracy {acc:.3f} is higher than {before:.3f} at a smaller eps"
    return found


def _weaker_than_baseline(rows: pd.DataFrame, tol: float) -> Findings:
    """PGD iterates FGSM's step from a random start; ending weaker than FGSM means it is mis-set."""
    found = {}
    keyed = rows.assign(_eps=_eps_key(rows))
    for strong, weak in STRONGER_THAN:
        baseline = keyed[keyed["attack"] == weak].groupby("_eps")["accuracy"].min()
        for idx, row in keyed[keyed["attack"] == strong].iterrows():
            other = baseline.get(row["_eps"])
            if pd.notna(other) and row["accuracy"] > other + tol:
                found[idx] = f"{strong} accuracy {row['accuracy']:.3f} is above {weak}'s {other:.3f}"
    return found


def _above_clean(rows: pd.DataFrame, tol: float) -> Findings:
    """No perturbation can repair a misclassified example, so no attack beats clean accuracy."""
    clean_rows = rows[_eps_key(rows) == 0]["accuracy"]
    if clean_rows.empty:
        return {}
    clean = clean_rows.max()
    attacked = rows[(_eps_key(rows) > 0) & (rows["accuracy"] > clean + tol)]
    return {
        idx: f"accuracy {acc:.3f} is above the clean accuracy {clean:.3f}"
        for idx, acc in attacked["accuracy"].items()
    }


def _noise_stronger_than_adversarial(rows: pd.DataFrame, tol: float) -> Findings:
    """Random noise is a lower bound on an attack's strength; losing to it signals masked gradients."""
    l2 = rows[rows["norm"] == "l2"].assign(_eps=_eps_key(rows))
    adversarial = l2[l2["attack"] != NOISE].groupby("_eps")["accuracy"].min()
    found = {}
    for idx, row in l2[(l2["attack"] == NOISE) & (l2["_eps"] > 0)].iterrows():
        best = adversarial.get(row["_eps"])
        if pd.notna(best) and row["accuracy"] < best - tol:
            found[idx] = f"noise accuracy {row['accuracy']:.3f} is below the adversarial attacks' {best:.3f}"
    return found


def _nonzero_at_grey_eps(rows: pd.DataFrame, tol: float) -> Findings:
    """At L∞ ε >= 0.5 an adversary can erase every image to grey: robust accuracy should be 0."""
    grey = rows[
        (rows["norm"] == "linf")
        & (rows["attack"] != NOISE)
        & (_eps_key(rows) >= GREY_EPS)
        & (rows["accuracy"] > 0)
    ]  # fmt: skip
    return {
        idx: f"accuracy {acc:.3f} > 0 at an eps that can turn any image grey"
        for idx, acc in grey["accuracy"].items()
    }


CHECKS: tuple[Check, ...] = (
    Check("rises_with_eps", _rises_with_eps),
    Check("pgd_weaker_than_fgsm", _weaker_than_baseline),
    Check("above_clean", _above_clean),
    Check("noise_stronger_than_adversarial", _noise_stronger_than_adversarial),
    Check("nonzero_at_grey_eps", _nonzero_at_grey_eps),
)


def _findings(df: pd.DataFrame, tolerance: float) -> list[tuple[str, Hashable, str]]:
    """(check name, row index, reason) for every problem, model by model, in CHECKS order."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RobenchError(f"results table lacks column(s) {', '.join(missing)}")
    if not df.index.is_unique:
        raise RobenchError("results table has a non-unique index; reset it before checking")
    rows = df[~df["attack"].isin(IGNORED_ATTACKS)]
    # Compare only rows of one evaluation: the same model on the same images (n) and seed.
    by = ["model"] + [c for c in ("n", "seed") if c in rows.columns]
    out = []
    for _, model_rows in rows.groupby(by, sort=False):
        for check in CHECKS:
            for idx, reason in check.find(model_rows, tolerance).items():
                out.append((check.name, idx, reason))
    return out


def flag_rows(df: pd.DataFrame, tolerance: float = 0.02) -> pd.Series:
    """Per row, the ";"-joined names of the checks it fails ("" if none), aligned with df's index.

    Args:
        df: results with columns model, attack, norm, epsilon, accuracy.
        tolerance: accuracy differences up to this are sampling noise, not a problem.
    """
    flags: dict[Hashable, list[str]] = {idx: [] for idx in df.index}
    for name, idx, _ in _findings(df, tolerance):
        if name not in flags[idx]:
            flags[idx].append(name)
    return pd.Series([";".join(flags[idx]) for idx in df.index], index=df.index, dtype=object)


def warnings_for(df: pd.DataFrame, tolerance: float = 0.02) -> list[str]:
    """One human-readable line per problem found, e.g. for the CLI to print after an evaluation."""
    lines = []
    for name, idx, reason in _findings(df, tolerance):
        row = df.loc[idx]
        lines.append(
            f"{row['model']}: {row['attack']} at eps={float(row['epsilon']):g}: {reason} [{name}]"
        )
    return lines
