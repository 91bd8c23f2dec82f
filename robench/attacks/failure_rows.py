"""The indicators of attack failure as result rows carry them (`robench.attacks.failure` measures them):
shares of a row's images, merged over calls, as JSON, and the shares above which a row is flagged.
Torch-free: the checks read them from any results file without loading an attack."""

from __future__ import annotations

import json
from typing import Any

INDICATORS = ("silent_success", "unavailable_gradients", "incomplete", "non_converging")
# Share of a row's n images above which the row is flagged, per indicator: points of robust accuracy
# that may rest on a failed attack. Measured on the demo's two LeNet' models (200 images,
# eps 0.1 and 0.2): PGD-40 at most 0.010 on any indicator; PGD-2 incomplete 0.09-0.87; PGD with a 100x step
# silent success 0.015-0.066 and non-converging 0.010-0.28.
FLAG_SHARE = {"silent_success": 0.02, "unavailable_gradients": 0.01, "incomplete": 0.03, "non_converging": 0.03}


def merge(parts: list[dict]) -> dict:
    """The indicators of one row from those of its attack calls (batches, shards): shares weighted by n."""
    parts = [p for p in parts if p and p.get("n")]
    n = sum(p["n"] for p in parts)
    if not n:
        return {}
    return {"n": n, **{k: round(sum(p[k] * p["n"] for p in parts) / n, 6) for k in INDICATORS}}


def per_row(found: dict, total: int) -> dict:
    """A call's indicators (shares of the examples it attacked) as shares of a row's `total` images: the
    points of robust accuracy at stake, comparable between a cascade step that ran on 3 survivors and PGD
    on all of them. `attacked` keeps how many the attack ran on."""
    if not found or not total:
        return {}
    return {"attacked": found["n"], "n": int(total),
            **{k: round(found[k] * found["n"] / total, 6) for k in INDICATORS}}


def as_json(found: dict) -> str:
    return json.dumps(found, sort_keys=True, separators=(",", ":")) if found else ""


def from_json(text: Any) -> dict | None:
    """A row's attack_failure, or None when it has none (untraced attacks, older rows)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) and all(k in found for k in INDICATORS) else None
