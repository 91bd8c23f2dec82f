"""Certification as attack specs: `certify-ibp`, `certify-crown` and `verify-milp` in attacks/ (engine
"robench", `role = "certified"`), run by `robench eval` like any attack and stored as result rows.

Their rows are lower bounds, not attacks: per example, robust is 1 only where the example is certified
(proved: nothing in the ε-ball ∩ [0, 1] changes the prediction); the verdict itself ("certified",
"broken": a re-checked counterexample, "unknown": neither) is kept beside it, in the per-example `value`
of the outcomes (1, -1, 0: `STATUS_CODE`), and the row's `value` is the share left unknown. The row's
accuracy and interval therefore count unknown as not certified. Certified rows never join the worst case
(robench.results.derived), and a certified example that any attack breaks is flagged as a bug
(`certified_but_broken`, robench.trust_checks). `certify-radius` gives each example's certified radius instead (every ε from one bisection), beside CW's
and DDN's minimal distances: certified radius <= true distance <= attacked distance. The bounds are
robench.certify's.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RobenchError

STATUS_CODE = {"certified": 1.0, "unknown": 0.0, "broken": -1.0}
KIND = "certified"


class Certify:
    """Bound propagation at a fixed ε (robench.certify.certify): IBP or CROWN, L∞ or L2.

    Args:
        method: "ibp" (interval bounds) or "crown" (backward linear relaxation; never looser than IBP).
    """

    def __init__(self, method: str = "crown"):
        if method not in ("ibp", "crown"):
            raise ValueError(f"method must be 'ibp' or 'crown', got {method!r}")
        self.method = method

    def __call__(self, model, x, y, eps: float, norm: str):
        from ..certify import certify

        return certify(model, x, y, eps, norm=norm, method=self.method)


class VerifyMILP:
    """Exact verification of a small ReLU network by mixed-integer programming (robench.certify.verify_milp),
    L∞ only, with a time limit per example (an example out of time is unknown, and counted).

    Args:
        time_limit: seconds per example.
        bounds: the pre-activation bounds that tighten the program ("crown" or "ibp").
    """

    def __init__(self, time_limit: float = 30.0, bounds: str = "crown"):
        if not time_limit > 0 or bounds not in ("ibp", "crown"):
            raise ValueError("time_limit must be > 0 and bounds 'ibp' or 'crown'")
        self.time_limit, self.bounds = float(time_limit), bounds

    def __call__(self, model, x, y, eps: float, norm: str):
        from ..certify import verify_milp

        return verify_milp(model, x, y, eps, norm=norm, time_limit=self.time_limit, bounds=self.bounds)


class CertifiedRadius:
    """A proven lower bound of each example's distance to the decision boundary (robench.certify.
    certified_radius: bisection on ε of IBP or CROWN): one run gives every ε (certified at ε iff radius >= ε),
    beside CW's and DDN's minimal adversarial distances, which bound the same distance from above.

    Args:
        method: "ibp" or "crown".
        hi: the largest radius tried.
        steps: bisection steps (precision hi / 2**steps).
    """

    def __init__(self, method: str = "crown", hi: float = 0.5, steps: int = 12):
        if method not in ("ibp", "crown") or not hi > 0 or not 1 <= steps <= 40:
            raise ValueError("method must be 'ibp' or 'crown', hi > 0 and steps in 1..40")
        self.method, self.hi, self.steps = method, float(hi), int(steps)

    def __call__(self, model, x, y, norm: str) -> torch.Tensor:
        from ..certify import certified_radius

        return certified_radius(model, x, y, norm=norm, method=self.method, hi=self.hi, steps=self.steps)


CLASSES = {"Certify": Certify, "VerifyMILP": VerifyMILP, "CertifiedRadius": CertifiedRadius}
NORMS = {"Certify": ("linf", "l2"), "VerifyMILP": ("linf",), "CertifiedRadius": ("linf", "l2")}


def check_class(name: Any, params: dict, norm: Any, where: str) -> str:
    """Validate a certification spec against its class's signature and norms; returns its kind."""
    from .robench_engine import check_params

    cls = check_params(CLASSES, "certification", name, params, where)
    if norm not in NORMS[name]:
        raise RobenchError(f"{where}: {name} certifies norm {' or '.join(NORMS[name])}, not {norm!r}")
    try:
        cls(**params)
    except ValueError as exc:
        raise RobenchError(f"{where}: {name}: {exc}") from None
    return KIND


def certified_outcomes(spec: Any, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(robust: 1.0 where certified, float (N,) on CPU; status codes float64 (N,): 1 certified, 0 unknown,
    -1 broken). A verdict of "broken" is only ever a re-checked counterexample (or a misclassified clean
    input); ε = 0 certifies exactly the clean-correct examples."""
    from .verify import _clean_correct

    correct = _clean_correct(model, images, labels).cpu()
    if eps == 0 or len(labels) == 0:
        return correct.float(), torch.where(correct, 1.0, -1.0).double()
    result = CLASSES[spec.class_name](**spec.params)(model, images, labels, float(eps), spec.norm)
    codes = torch.tensor([STATUS_CODE[s] for s in result.status], dtype=torch.float64)
    return (codes == 1).float(), codes


def certified_radii(spec: Any, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example the certified radius (float64 (N,) on CPU; 0 where the clean input is misclassified)."""
    from .verify import _clean_correct

    correct = _clean_correct(model, images, labels).cpu()
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.float64)
    radii = CLASSES[spec.class_name](**spec.params)(model, images, labels, spec.norm)
    return torch.where(correct, radii, torch.zeros_like(radii))
