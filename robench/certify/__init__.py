"""Certified robustness: proven lower bounds beside the attacks' upper bounds.

- `certify(model, x, y, eps, norm=, method="ibp" | "crown")`: per-example verdicts from bound propagation.
- `certified_radius(model, x, y, norm=, method=, hi=, steps=)`: a proven lower bound of each example's
  distance to the decision boundary, by bisection on ε.
- `verify_milp(model, x, y, eps, time_limit=)`: exact verdicts for small ReLU networks (Tjeng et al. 2019).

Every verdict is "certified", "broken" (with a re-checked counterexample) or "unknown"; see `CertifyResult`.
Importing this package loads torch only (scipy loads when the MILP runs).
"""

from .api import TOLERANCE, CertifyResult, certified_radius, certify
from .milp import verify_milp

__all__ = ["TOLERANCE", "CertifyResult", "certified_radius", "certify", "verify_milp"]
