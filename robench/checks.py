"""Honesty checks on a results table: signs of gradient masking or a mis-set attack.

In the spirit of AutoAttack's checks, these are output, not errors: a flagged row is a number the
reader should not trust without a second look. Each check is a small function in `CHECKS` that looks
at one evaluation's rows (one model, n and seed) and returns {row index: reason} or
{row index: (flag, reason)}; adding a check is adding an entry, not a branch. What an attack is
(a baseline such as noise; iterative or not; which attacks it must never be weaker than) comes from
its spec file (`robench.attacks.relations`), never from names written here.
The table needs the columns model, attack, norm, epsilon, accuracy (and n, seed, protocol when
known); the pseudo-attack "jacobian_norm" row of an evaluation is only read for its grey_share and
distinct_predictions. Pure pandas: no Foolbox, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import pandas as pd

from .errors import RobenchError
from .check_rows import EPS_DECIMALS, Findings, _eps_key, _relation  # noqa: F401 - EPS_DECIMALS: public here
from .results.csvfile import JACOBIAN_ATTACK as JACOBIAN, JACOBIAN_ATTACKS

REQUIRED_COLUMNS = ("model", "attack", "norm", "epsilon", "accuracy")
GREY_EPS = 0.5  # at L∞ ε >= 0.5 every [0, 1] image can be moved to the all-grey image



@dataclass(frozen=True)
class Check:
    """One named check: `find(rows_of_one_evaluation, tolerance, relations)` -> {row index: reason}."""

    name: str
    find: Callable[[pd.DataFrame, float, dict], Findings]


def _rises_with_eps(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
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


def _weaker_than_declared(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """An attack whose spec says `stronger_than = ["fgsm"]` (PGD iterates FGSM's step from a random
    start) must not end weaker than it at equal ε and norm; if it does, it is mis-set."""
    found = {}
    keyed = rows.assign(_eps=_eps_key(rows))
    for strong in keyed["attack"].unique():
        for weak in _relation(relations, strong).stronger_than:
            for norm in keyed.loc[keyed["attack"] == strong, "norm"].unique():
                baseline = keyed[(keyed["attack"] == weak) & (keyed["norm"] == norm)].groupby("_eps")["accuracy"].min()
                for idx, row in keyed[(keyed["attack"] == strong) & (keyed["norm"] == norm)].iterrows():
                    other = baseline.get(row["_eps"])
                    if pd.notna(other) and row["accuracy"] > other + tol:
                        found[idx] = (f"{strong}_weaker_than_{weak}",
                                      f"{strong} accuracy {row['accuracy']:.3f} is above {weak}'s {other:.3f}")
    return found


def _above_clean(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
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


def _weaker_than_noise(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """Random noise is a lower bound on an attack's strength: an adversarial attack that leaves more
    accuracy than noise of the same norm and size signals masked gradients or a mis-set attack.
    Each adversarial attack is compared with the noise on its own, and its row is the one flagged."""
    keyed = rows.assign(_eps=_eps_key(rows))
    baseline = keyed["attack"].map(lambda a: _relation(relations, a).role == "baseline")
    certified = keyed["attack"].map(lambda a: _relation(relations, a).role == "certified")  # a lower bound
    found = {}
    for norm in keyed.loc[baseline, "norm"].unique():
        noise = keyed[baseline & (keyed["norm"] == norm) & (keyed["_eps"] > 0)].groupby("_eps")["accuracy"].min()
        for idx, row in keyed[~baseline & ~certified & (keyed["norm"] == norm)].iterrows():
            level = noise.get(row["_eps"])
            if pd.notna(level) and row["accuracy"] > level + tol:
                found[idx] = f"{row['attack']} accuracy {row['accuracy']:.3f} is above noise's {level:.3f}"
    return found


def _above_grey_share(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """At L∞ ε >= 0.5 an iterative adversary can move any image to the all-grey one, so at most the
    examples whose label the model predicts for that grey image can stay robust (grey_share, measured
    at evaluation; about 10% on MNIST). Single-step attacks (FGSM) and baselines are not held to it."""
    share = rows.attrs.get("grey_share")
    if share is None or pd.isna(share):
        return {}
    iterative = rows["attack"].map(lambda a: _relation(relations, a).iterative or a == "worst_case")
    grey = rows[iterative & (rows["norm"] == "linf") & (_eps_key(rows) >= GREY_EPS) & (rows["accuracy"] > share + tol)]
    return {
        idx: f"accuracy {acc:.3f} is above {share:.3f}, the share of examples the grey image would leave robust"
        for idx, acc in grey["accuracy"].items()
    }


def _weaker_than_worst_case(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """An iterative attack (PGD, CW) more than `tol` above the worst case over the ensemble at its ε
    understates the threat: the user should report the worst case, not this row."""
    worst = rows[rows["attack"] == "worst_case"].assign(_eps=lambda r: _eps_key(r))
    if worst.empty:
        return {}
    found = {}
    level = {(n, e): a for n, e, a in zip(worst["norm"], worst["_eps"], worst["accuracy"])}
    for idx, row in rows.assign(_eps=_eps_key(rows)).iterrows():
        if row["attack"] == "worst_case" or not _relation(relations, row["attack"]).iterative:
            continue
        w = level.get((row["norm"], row["_eps"]))
        if w is not None and row["accuracy"] > w + tol:
            found[idx] = f"accuracy {row['accuracy']:.3f} is above the worst case over attacks, {w:.3f}"
    return found


def _one_class(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """A model that predicts one class for every clean input (diverged, or collapsed) cannot be
    attacked, and its accuracy is that class's share at every ε: a number that looks like robustness
    and is none. Every attacked row is flagged."""
    if rows.attrs.get("distinct_predictions") != 1:
        return {}
    return {idx: "the model predicts one class for every clean input" for idx in rows.index[_eps_key(rows) > 0]}


from .trust_checks import (  # noqa: E402 - the trust checks, in CHECKS below
    MODEL_FLAGS, TRUST_FLAGS, _attack_failure, _blackbox_alone, _blackbox_stronger, _certified_but_broken,
    _dlr_stronger_than_ce, _model_checks,
)  # fmt: skip


CHECKS: tuple[Check, ...] = (
    Check("rises_with_eps", _rises_with_eps),
    Check("weaker_than_declared", _weaker_than_declared),
    Check("above_clean", _above_clean),
    Check("noise_stronger_than_adversarial", _weaker_than_noise),
    Check("above_grey_share", _above_grey_share),
    Check("one_class_for_every_input", _one_class),
    Check("weaker_than_worst_case", _weaker_than_worst_case),
    Check("model_checks", _model_checks),
    Check("blackbox_stronger", _blackbox_stronger),
    Check("ce_loss_masked", _dlr_stronger_than_ce),
    Check("blackbox_alone", _blackbox_alone),
    Check("attack_failure", _attack_failure),
    Check("certified_but_broken", _certified_but_broken),
)


def _findings(df: pd.DataFrame, tolerance: float, relations: dict | None) -> list[tuple[str, Hashable, str]]:
    """(flag, row index, reason) for every problem, evaluation by evaluation, in CHECKS order."""
    from .attacks import relations as spec_relations

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RobenchError(f"results table lacks column(s) {', '.join(missing)}")
    if not df.index.is_unique:
        raise RobenchError("results table has a non-unique index; reset it before checking")
    relations = spec_relations() if relations is None else relations
    # Compare only rows of one evaluation: the same model on the same images (n), seed and protocol.
    by = ["model"] + [c for c in ("n", "seed", "protocol") if c in df.columns]
    out = []
    for _, model_rows in df.groupby(by, sort=False):
        jac = model_rows[model_rows["attack"] == JACOBIAN]
        rows = model_rows[~model_rows["attack"].isin(JACOBIAN_ATTACKS)].copy()
        for column in ("grey_share", "distinct_predictions"):
            if column in jac.columns and len(jac) and pd.notna(jac[column].iloc[-1]):
                rows.attrs[column] = float(jac[column].iloc[-1])
        if rows.empty:
            continue
        for check in CHECKS:
            for idx, found in check.find(rows, tolerance, relations).items():
                for item in found if isinstance(found, list) else [found]:
                    flag, reason = item if isinstance(item, tuple) else (check.name, item)
                    out.append((flag, idx, reason))
    return out


def flag_rows(df: pd.DataFrame, tolerance: float = 0.02, *, relations: dict | None = None) -> pd.Series:
    """Per row, the ";"-joined names of the checks it fails ("" if none), aligned with df's index.

    Args:
        df: results with columns model, attack, norm, epsilon, accuracy.
        tolerance: accuracy differences up to this are sampling noise, not a problem.
        relations: {attack: Relation}; default: read from the packaged attack specs.
    """
    flags: dict[Hashable, list[str]] = {idx: [] for idx in df.index}
    for name, idx, _ in _findings(df, tolerance, relations):
        if name not in flags[idx]:
            flags[idx].append(name)
    return pd.Series([";".join(flags[idx]) for idx in df.index], index=df.index, dtype=object)


def warnings_for(df: pd.DataFrame, tolerance: float = 0.02, *, relations: dict | None = None) -> list[str]:
    """One human-readable line per problem found, e.g. for the CLI to print after an evaluation."""
    lines, model_level = [], {}
    for name, idx, reason in _findings(df, tolerance, relations):
        row = df.loc[idx]
        if name in MODEL_FLAGS:  # one line per model and flag, not one per row
            model_level.setdefault((row["model"], name, reason), []).append(row["attack"])
            continue
        lines.append(f"{row['model']}: {row['attack']} at eps={float(row['epsilon']):g}: {reason} [{name}]")
    for (model, name, reason), attacks in model_level.items():
        names = ", ".join(dict.fromkeys(a for a in attacks if "." not in a))
        lines.append(f"{model}: {names} ({len(attacks)} rows): {reason} [{name}]")
    return lines
