"""Rows derived from other rows' per-example outcomes: the worst case over attacks.

For one evaluation (model, first n images, seed, protocol) and one norm, the `worst_case` row at ε is
the fraction of examples robust under every adversarial attack of that norm at ε: an example counts
as broken when any fixed-ε attack broke it at ε, or when a minimization attack (CW) found an
adversarial at distance ≤ ε (so CW's distances fold into every ε, on its grid or not). Baselines
(noise, `role = "baseline"` in its spec) are not adversaries and never join, nor do certifications
(`role = "certified"`: proven lower bounds); but an example a certification proved robust that the worst
case breaks is a soundness bug, and the worst_case row says so (`certified_but_broken` in its
attack_params, and in its hash, so the row is derived anew when such a row joins; robench.trust_checks
flags it). Only the latest spec of
each attack takes part, and only rows that kept their outcomes. A row needs two or more attacks at its
ε; it is recomputed whenever another attack's row joins the evaluation. Rows of the same model, seed
and protocol on more images join with their first n outcomes where those are exactly what n images give
(`ResultsStore._prefix_rows`).

From protocol 3 (CARRY_PROTOCOL) the worst case carries breaks to larger ε, per example, as the suites'
cascade does: a fixed-ε attack's break at ε' counts at every ε >= ε' (its adversarial lies in the larger
ball), so at an ε some attack did not run its breaks from smaller ε still count, and the curve never
rises with ε. The row's identity says what it carried: its spec_hash hashes every row that counts at ε
(attack, spec_hash, ε'); attack_params lists the ε' < ε whose breaks it carries as `carried_eps`. Rows of older
protocols keep their meaning (no carry; one spec_hash per norm).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from .csvfile import JACOBIAN_ATTACKS, LEGACY_PROTOCOL, WORST_CASE, eps_key

CARRY_PROTOCOL = 3  # the first protocol whose worst case carries breaks to larger ε


def spec_family(spec_hash: str, attack_params: Any) -> str:
    """The spec a row was made with, whatever grid it carried: a suite's rows (protocol 3) have one
    spec_hash per carried grid and name their suite's spec as "spec" in attack_params; others: spec_hash."""
    text = str(attack_params or "")
    if '"spec"' in text:  # cheap test first: most rows are not a suite's
        try:
            family = json.loads(text).get("spec")
        except (ValueError, AttributeError):
            family = None
        if isinstance(family, str):
            return family
    return str(spec_hash)


def latest_members(rows: list[dict[str, Any]], relations: dict) -> list[dict[str, Any]]:
    """The rows that may join a worst case: adversarial, with outcomes, each attack's latest spec only
    (a suite's rows of every carried grid: they are all valid breaks)."""
    from ..attacks import Relation

    latest: dict[str, str] = {}
    for row in rows:  # rows come in insertion order: the last spec seen of an attack is its latest
        if row["attack"] != WORST_CASE and row["attack"] not in JACOBIAN_ATTACKS:
            latest[row["attack"]] = spec_family(row["spec_hash"], row.get("attack_params"))
    return [
        r for r in rows
        if r["attack"] in latest and spec_family(r["spec_hash"], r.get("attack_params")) == latest[r["attack"]]
        and r.get("_robust") is not None and relations.get(r["attack"], Relation()).role == "adversarial"
    ]  # fmt: skip


def worst_case_rows(rows: list[dict[str, Any]], relations: dict) -> list[dict[str, Any]]:
    """The worst_case rows of one evaluation (see the module docstring), with their outcomes.

    Args:
        rows: every row of one (model_hash, n, seed, protocol), in insertion order, each with its
            outcome arrays under "_robust" and "_distance" (None when not kept).
        relations: {attack: Relation} from `robench.attacks.relations()`.
    """
    members = latest_members(rows, relations)
    carry = bool(rows) and int(rows[0].get("protocol", LEGACY_PROTOCOL)) >= CARRY_PROTOCOL
    out = []
    for norm in sorted({r["norm"] for r in members}):
        of_norm = [r for r in members if r["norm"] == norm]
        minimizers = {r["attack"]: r for r in of_norm if r.get("_distance") is not None}
        fixed = [r for r in of_norm if r.get("_distance") is None]
        grid = sorted({eps_key(r["epsilon"]) for r in of_norm})
        names = sorted({r["attack"]: r["spec_hash"] for r in of_norm}.items())
        spec_hash = hashlib.sha256(json.dumps([norm, names]).encode()).hexdigest()[:12]
        for eps in grid:
            at_eps = [r for r in fixed if eps_key(r["epsilon"]) == eps]
            below = [r for r in fixed if 0 < eps_key(r["epsilon"]) < eps] if carry else []
            used = at_eps + below + list(minimizers.values())
            joined = {r["attack"]: spec_family(r["spec_hash"], r.get("attack_params")) for r in used}
            if len(joined) < 2:
                continue
            parts = [np.asarray(r["_robust"], dtype=float) >= 1.0 for r in at_eps + below]
            parts += [np.asarray(r["_distance"], dtype=float) > eps for r in minimizers.values()]
            robust = np.logical_and.reduce(parts).astype(float)
            params: dict[str, Any] = {"norm": norm, "attacks": dict(sorted(joined.items()))}
            row_hash = spec_hash
            if carry:
                carried: dict[str, list[float]] = {}
                for r in below:
                    carried[r["attack"]] = sorted({*carried.get(r["attack"], []), eps_key(r["epsilon"])})
                params["carried_eps"] = carried
                counted = sorted({(r["attack"], r["spec_hash"], eps_key(r["epsilon"]) if r.get("_distance") is None else -1.0)
                                  for r in used})  # every row that counts (a minimizer: at every ε)  # fmt: skip
                row_hash = hashlib.sha256(json.dumps([norm, counted]).encode()).hexdigest()[:12]
            conflicts = _certified_but_broken(rows, relations, norm, eps, robust)
            if conflicts:
                params["certified_but_broken"] = conflicts
                row_hash = hashlib.sha256(json.dumps([row_hash, conflicts], sort_keys=True).encode()).hexdigest()[:12]
            template = rows[-1] if rows else used[0]
            out.append({
                **{k: template[k] for k in ("model", "dataset", "defense", "n", "seed", "model_hash", "protocol",
                                            "robench_version")},
                "attack": WORST_CASE, "norm": norm, "epsilon": eps, "spec_hash": row_hash,
                "accuracy": float(robust.mean()), "value": float("nan"),
                "attack_params": json.dumps(params, sort_keys=True),
                "timestamp": max(str(r.get("timestamp", "")) for r in used),
                "_robust": robust, "_distance": None, "_value": None,
            })  # fmt: skip
    return out


def _certified_but_broken(rows: list[dict[str, Any]], relations: dict, norm: str, eps: float,
                          robust: np.ndarray) -> dict[str, int]:  # fmt: skip
    """{certification: how many of the examples it proved robust at ε the worst case breaks}, where any."""
    from ..attacks import Relation

    found = {}
    for r in rows:
        if (relations.get(r["attack"], Relation()).role == "certified" and r["norm"] == norm
                and eps_key(r["epsilon"]) == eps and r.get("_robust") is not None):  # fmt: skip
            certified = np.asarray(r["_robust"], dtype=float) >= 1.0
            if len(certified) == len(robust) and (count := int((certified & (robust < 1.0)).sum())):
                found[r["attack"]] = found.get(r["attack"], 0) + count
    return found
