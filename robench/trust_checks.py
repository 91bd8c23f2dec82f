"""The checks that ask whether an evaluation can be trusted at all (AutoAttack's checks, the indicators of
attack failure): facts about the model (`robench.model_probes`), a black-box attack doing what gradients
could not, a loss that hides the threat, an attack's own path. Each is a check function for
`robench.checks.CHECKS`, flagging the rows it concerns; TRUST_FLAGS says what each flag means for the number.
Pure pandas: no Foolbox, no torch."""

from __future__ import annotations

import json
from typing import Hashable

import pandas as pd

from .check_rows import Findings, _eps_key, _relation


BLACKBOX_MARGIN = 0.002  # AutoAttack's: Square breaking more than 0.2 points beyond the white-box attacks
DLR_MARGIN = 0.05  # APGD-T adds ~1-3 points beyond APGD-CE on honest MNIST models; 50 on a saturated softmax


def _probes(rows: pd.DataFrame) -> dict | None:
    """The evaluation's model_checks (the latest row that has them)."""
    from .model_probes import from_json

    if "model_checks" not in rows.columns:
        return None
    found = [p for p in map(from_json, rows["model_checks"]) if p is not None]
    return found[-1] if found else None


def _gradient_rows(rows: pd.DataFrame, relations: dict) -> pd.Index:
    """Rows whose number comes (partly) from gradients: white-box attacks, suites holding one, worst cases."""
    keep = rows["attack"].map(lambda a: a == "worst_case" or _relation(relations, a).uses_gradients)
    return rows.index[keep & (_eps_key(rows) > 0)]


def _model_checks(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """Facts about the model that make gradient attacks unreliable, flagged on the rows they concern."""
    probes = _probes(rows)
    if probes is None:
        return {}
    found: dict = {}

    def flag(index, name: str, reason: str) -> None:
        for idx in index:
            found.setdefault(idx, []).append((name, reason))

    gradient_rows = _gradient_rows(rows, relations)
    adversarial = rows.index[rows["attack"].map(lambda a: a == "worst_case" or _relation(relations, a).role == "adversarial")
                             & (_eps_key(rows) > 0)]  # fmt: skip
    n = probes.get("n", 0)
    if probes.get("randomized"):
        flag(adversarial, "randomized_model",
             f"the model's outputs change between identical forward passes ({probes.get('prediction_flips', 0)} of "
             f"{n} predictions flip; normalized outputs move up to {probes.get('output_change', 0):.2g}): a single "
             "gradient or re-check is one random draw, so robench averaged gradients over draws (EOT, 20 unless "
             "--eot says otherwise) and re-checked by the majority of 20 passes; an adaptive attack may still do "
             "better")  # fmt: skip
    share = float(probes.get("zero_gradient_share") or 0)
    if share > 0:
        flag(gradient_rows, "zero_gradients",
             f"{share:.0%} of {n} probed examples have an input gradient of exactly zero: gradient attacks cannot "
             "move them, so this accuracy can be too high (non-differentiable preprocessing or a saturated "
             "softmax); trust black-box attacks or a surrogate's gradients for those examples")  # fmt: skip
    if probes.get("probabilities"):
        flag(gradient_rows, "probability_outputs",
             "the model outputs probabilities, not logits: cross-entropy on them squashes the gradients, so "
             "gradient attacks are weakened; evaluate the logits")  # fmt: skip
    classes = int(probes.get("classes") or 0)
    dlr = rows.index[rows["attack"].map(lambda a: _relation(relations, a).loss == "dlr") & (_eps_key(rows) > 0)]
    if 0 < classes < 4 and len(dlr):
        flag(dlr, "too_few_classes",
             f"the model has {classes} classes; the targeted DLR loss needs 4 or more (the DLR loss 3), so this "
             "attack's loss is ill-defined")  # fmt: skip
    if int(probes.get("gradient_in_forward") or 0) > 0:
        flag(gradient_rows, "gradient_in_forward",
             "the model computes gradients inside its own forward pass (a dynamic defense): attacks differentiate "
             "through that optimization only as far as autograd does, so this accuracy can be too high; an "
             "adaptive attack is needed")  # fmt: skip
    return {idx: reasons if len(reasons) > 1 else reasons[0] for idx, reasons in found.items()}


BLACKBOX_ALONE_SHARE = 0.5  # zero input gradients on at least half the probed examples: gradients are missing


def _blackbox_alone(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """Gradients missing (most input gradients exactly zero) and no surrogate: the worst case and the
    suites rest on black-box attacks alone. Said on the rows a user reads as the robust accuracy."""
    probes = _probes(rows)
    share = float((probes or {}).get("zero_gradient_share") or 0)
    if share < BLACKBOX_ALONE_SHARE:
        return {}
    params = rows["attack_params"].astype(str) if "attack_params" in rows.columns else pd.Series("", index=rows.index)
    transferred = set(_eps_key(rows)[params.str.contains('"surrogate"', regex=False)])
    headline = rows["attack"].map(lambda a: a == "worst_case" or ("." not in a and "suite" in _params_of(rows, a)))
    reason = (f"{share:.0%} of the probed examples have exactly zero input gradients, so gradient attacks could not "
              "move them: this number rests on black-box attacks alone (Square); --surrogate RUN crafts the "
              "gradient attacks on a differentiable model and transfers them")  # fmt: skip
    return {idx: ("blackbox_alone", reason) for idx in rows.index[headline & (_eps_key(rows) > 0)]
            if _eps_key(rows.loc[[idx]]).iloc[0] not in transferred}


def _params_of(rows: pd.DataFrame, attack: str) -> str:
    if "attack_params" not in rows.columns:
        return ""
    found = rows.loc[rows["attack"] == attack, "attack_params"]
    return str(found.iloc[-1]) if len(found) else ""


def _attack_failure(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """Indicators of attack failure (`robench.attacks.failure`) above their thresholds, on the attack's row
    and, for a cascade member, on its suite's row at that ε."""
    if "attack_failure" not in rows.columns:
        return {}
    from .attacks.failure_rows import FLAG_SHARE, from_json

    keyed = rows.assign(_eps=_eps_key(rows))
    found: dict = {}
    for idx, text in rows["attack_failure"].items():
        indicators = from_json(text)
        if indicators is None:
            continue
        attack = str(rows.at[idx, "attack"])
        suite_rows = keyed.index[(keyed["attack"] == attack.split(".", 1)[0]) & (keyed["_eps"] == keyed.at[idx, "_eps"])] \
            if "." in attack else []  # fmt: skip
        for name, limit in FLAG_SHARE.items():
            share = float(indicators.get(name) or 0)
            if share > limit:
                flag, reason = _FAILURE_FLAGS[name](share, int(indicators.get("n") or 0))
                for target in [idx, *suite_rows]:
                    found.setdefault(target, []).append((flag, f"{attack}: {reason}" if target != idx else reason))
    return {idx: reasons if len(reasons) > 1 else reasons[0] for idx, reasons in found.items()}


_FAILURE_FLAGS = {
    "silent_success": lambda share, n: ("silent_success", (
        f"on {share:.1%} of the {n} examples the attack passed an adversarial point and returned one that is "
        "not (robench counted the point it passed): its step size or schedule is off, so it may also have walked "
        "past adversarials it never evaluated")),
    "unavailable_gradients": lambda share, n: ("unavailable_gradients", (
        f"the input gradient at the attack's first point was exactly zero on {share:.1%} of the {n} "
        "examples: the attack could not move them, so this accuracy can be too high")),
    "incomplete": lambda share, n: ("incomplete_optimization", (
        f"on {share:.1%} of the {n} examples the attack was still gaining at its last steps: more steps "
        "would likely break more, so this accuracy can be too high")),
    "non_converging": lambda share, n: ("non_converging", (
        f"on {share:.1%} of the {n} examples the attack's loss kept climbing back over its second half: "
        "the steps are too large to settle, so this accuracy can be too high")),
}


def _cascade_steps(rows: pd.DataFrame) -> list[tuple[Hashable, list[tuple[str, Hashable]]]]:
    """(suite row index, [(member name, member row index), ...] in cascade order) for every suite row."""
    import json

    out = []
    keyed = rows.assign(_eps=_eps_key(rows))
    for idx, row in keyed.iterrows():
        try:
            params = json.loads(row.get("attack_params") or "{}")
        except (json.JSONDecodeError, TypeError):
            continue
        members = params.get("suite") if isinstance(params, dict) else None
        if not isinstance(members, list):
            continue
        steps = []
        for member in members:
            name = member[0] if isinstance(member, list) and member else None
            hit = keyed[(keyed["attack"] == f"{row['attack']}.{name}") & (keyed["_eps"] == row["_eps"])
                        & (keyed["spec_hash"] == row["spec_hash"])] if "spec_hash" in keyed.columns else keyed.iloc[:0]  # fmt: skip
            if len(hit):
                steps.append((name, hit.index[-1]))
        if len(steps) == len(members):
            out.append((idx, steps))
    return out


def _blackbox_stronger(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """A black-box member of a cascade (Square) breaking examples every white-box member before it left:
    gradients misled the white-box attacks, and the robust accuracy rests on a black-box attack alone for
    those examples (AutoAttack's check_square_sr)."""
    found = {}
    for suite_idx, steps in _cascade_steps(rows):
        before = None
        for name, idx in steps:
            acc = float(rows.at[idx, "accuracy"])
            if before is not None and _relation(relations, name).access == "black-box" and before - acc > BLACKBOX_MARGIN:
                reason = (f"{name} (black-box) broke {(before - acc) * 100:.1f} points of examples that every "
                          "white-box attack before it left: the gradients mislead, and this number rests on a black-box attack for "
                          "them; a stronger black-box or an adaptive attack may break more")  # fmt: skip
                found[idx] = found[suite_idx] = ("blackbox_stronger", reason)
                worst = rows[(rows["attack"] == "worst_case") & (rows["norm"] == rows.at[suite_idx, "norm"])
                             & (_eps_key(rows) == _eps_key(rows.loc[[suite_idx]]).iloc[0])]  # fmt: skip
                for w in worst.index:  # the number a user reads rests on it too
                    found[w] = ("blackbox_stronger", reason)
            before = acc
    return found


def _dlr_stronger_than_ce(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """A DLR-loss member of a cascade (APGD-T) breaking more than DLR_MARGIN beyond the cross-entropy
    members before it: cross-entropy gradients vanish (a saturated softmax, scaled logits), so every
    CE attack of the evaluation (PGD, FGSM, APGD-CE) at that ε understates the threat."""
    found = {}
    keyed = rows.assign(_eps=_eps_key(rows))
    for suite_idx, steps in _cascade_steps(rows):
        before, ce_seen = None, False
        for name, idx in steps:
            relation, acc = _relation(relations, name), float(rows.at[idx, "accuracy"])
            if before is not None and ce_seen and relation.loss == "dlr" and before - acc > DLR_MARGIN:
                eps = keyed.at[suite_idx, "_eps"]
                reason = (f"{name}'s DLR loss (blind to the logits' scale) broke {(before - acc) * 100:.1f} points of "
                          "examples the cross-entropy attacks left at this eps: cross-entropy gradients vanish here (a "
                          "saturated softmax), so cross-entropy attacks understate the threat; report the worst case")  # fmt: skip
                ce_rows = keyed[(keyed["_eps"] == eps) & keyed["attack"].map(lambda a: _relation(relations, a).loss == "ce")]
                for ce in ce_rows.index:
                    found[ce] = ("ce_loss_masked", reason)
            ce_seen = ce_seen or relation.loss == "ce"
            before = acc
    return found


MODEL_FLAGS = ("randomized_model", "zero_gradients", "probability_outputs", "too_few_classes", "gradient_in_forward",
               "blackbox_alone")  # fmt: skip
# The flags of AutoAttack's checks, and what each means for the number (the report's trust section).
TRUST_FLAGS = {
    "certified_but_broken": "an example a certification proved robust was broken by an attack: a soundness bug "
                            "(in robench.certify or the re-check), never sampling noise; trust neither row",
    "randomized_model": "outputs are random: attacked with EOT and re-checked by majority; an adaptive attack may do better",
    "zero_gradients": "some examples have exactly zero input gradients: gradient attacks cannot move them",
    "probability_outputs": "the model outputs probabilities: gradient attacks on them are weakened",
    "too_few_classes": "too few classes for the (targeted) DLR loss",
    "gradient_in_forward": "the model runs autograd in its forward pass (a dynamic defense): an adaptive attack is needed",
    "blackbox_stronger": "a black-box attack broke examples every white-box attack left: gradients mislead",
    "ce_loss_masked": "APGD-T's DLR loss broke what cross-entropy attacks left: CE gradients vanish",
    "blackbox_alone": "gradients are missing: the number rests on black-box attacks alone (try --surrogate)",
    "silent_success": "an attack passed an adversarial point and returned another: its steps are off",
    "unavailable_gradients": "an attack started from exactly zero input gradients on some examples",
    "incomplete_optimization": "an attack was still gaining at its last steps: more steps would break more",
    "non_converging": "an attack's loss kept climbing back: its steps are too large to settle",
}


def _certified_but_broken(rows: pd.DataFrame, tol: float, relations: dict) -> Findings:
    """A certification's proof and an attack's re-checked adversarial cannot both hold for one example: the
    worst_case row counts such examples (robench.results.derived); it and the certification's row at that
    ε are flagged, whatever the tolerance."""
    found: dict = {}
    keyed = rows.assign(_eps=_eps_key(rows))
    for idx, row in keyed[keyed["attack"] == "worst_case"].iterrows():
        try:
            conflicts = json.loads(str(row.get("attack_params") or "{}")).get("certified_but_broken") or {}
        except (ValueError, AttributeError):
            continue
        for attack, count in conflicts.items():
            reason = f"{count} example(s) {attack} certified at eps={row['_eps']:g} were broken by an attack"
            found.setdefault(idx, []).append(("certified_but_broken", reason))
            for other in keyed.index[(keyed["attack"] == attack) & (keyed["_eps"] == row["_eps"])
                                     & (keyed["norm"] == row["norm"])]:  # fmt: skip
                found.setdefault(other, []).append(("certified_but_broken", reason))
    return found
