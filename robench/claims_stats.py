"""How a claim between defenses is decided: like with like, seeds and images, Holm over its comparisons.

- Like with like: every model a comparison reads (each seed of each defense) must have been evaluated
  with the same attack spec hashes, ε grid, n, evaluation seed and protocol (`results.compare.mismatch`),
  and ||J|| in the same units; otherwise the claim reads **not comparable** with one line naming
  what differs.
- Seeds and images: each comparison is `results.seeds.defense_difference` (or `defense_ratio`,
  `defense_level`) on the seeds x images matrix of each defense. With fewer than 3 seeds per defense
  the seed variation is not measured and the claim reads **inconclusive**, whatever the images say.
- Multiplicity: a claim resting on k comparisons holds when Holm's procedure over the k p-values
  rejects every one of them in the claim's direction (and each interval is on the claim's side), and
  does not hold when it rejects at least one in the other direction; the chance of a false
  "does not hold" among the k stays below 5%.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALPHA = 0.05
PAPER_FIGURE_3 = ("base", "base+adv", "base+jr")  # claim 5's comparators: the paper's Figure 3b-c


def holm_verdict(estimates: list) -> tuple[str, list[float]]:
    """('holds' | 'does not hold' | 'inconclusive', Holm-adjusted p-values) of `DefenseEstimate`s, each
    against its own threshold (the claim's side: above it)."""
    from .results.stats import holm

    adjusted = holm([e.p_value if math.isfinite(e.p_value) else 1.0 for e in estimates])
    if not estimates or not all(e.seed_aware for e in estimates):
        return "inconclusive", adjusted
    above = [p < ALPHA and e.low > e.threshold for e, p in zip(estimates, adjusted)]
    below = [p < ALPHA and e.high < e.threshold for e, p in zip(estimates, adjusted)]
    if all(above):
        return "holds", adjusted
    return ("does not hold" if any(below) else "inconclusive"), adjusted


def fill(claim, estimate, verdict: str, **fields: Any) -> None:
    """Copy an estimate, its method and the verdict into a `claims.Claim`."""
    from .results.seeds import seeds_note

    claim.estimate, claim.ci_low, claim.ci_high, claim.threshold = (estimate.estimate, estimate.low, estimate.high,
                                                                    estimate.threshold)  # fmt: skip
    claim.n, claim.seeds, claim.verdict, claim.method = estimate.n, min(estimate.seeds), verdict, estimate.method
    claim.seeds_note = seeds_note(estimate.seeds)
    for key, value in fields.items():
        setattr(claim, key, value)


def beats(evidence, a: str, others: list[str], attack: str, norm: str, what: str) -> dict[str, Any]:
    """A against each of `others` on the per-image robustness score (accuracy averaged over ε > 0),
    seeds x images; the closest competitor is shown. {"missing": line} or {"refused": line} when the
    comparison cannot be made."""
    from .results.compare import mismatch
    from .results.seeds import defense_difference

    found, evaluations = {}, {}
    for defense in [a, *others]:
        got = evidence.scores(defense, attack, norm)
        if got is None:
            return {"missing": f"no {what} rows with per-example outcomes for {defense}"}
        found[defense], eps = got[0], got[2]
        evaluations.update(got[1])
    refused = mismatch(evaluations, what=what)
    if refused:
        return {"refused": refused}
    n = {m.shape[1] for m in found.values()}.pop()
    results = [(b, defense_difference(found[a], found[b])) for b in others]
    verdict, adjusted = holm_verdict([d for _, d in results])
    b, closest = min(results, key=lambda r: r[1].estimate)
    listed = "; ".join(f"{o}: {100 * d.estimate:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}], Holm p {p:.2g}"
                       for (o, d), p in zip(results, adjusted))  # fmt: skip
    accuracy = {d: float(m.mean()) for d, m in found.items()}
    return {
        "estimate": closest, "verdict": verdict, "n": n,
        "measure": (f"{what}: paired difference in accuracy averaged over ε ∈ {{{', '.join(f'{e:g}' for e in eps)}}}, "
                    f"{a} minus the closest of {', '.join(others)}"),
        "evidence": f"{a} {accuracy[a]:.3f} vs {b} {accuracy[b]:.3f} (closest); differences in points: {listed}",
    }  # fmt: skip


def jacobian_pair(evidence, first: str, second: str) -> tuple[np.ndarray, np.ndarray, str] | str | None:
    """Both defenses' exact test ||J||_F, seeds x images, in units both have (normalized preferred);
    the one-line reason they cannot be compared; or None when either has no ||J|| rows at all."""
    have = {}
    for defense in (first, second):
        have[defense] = {u: m for u in ("normalized", "pixel") if (m := evidence.jacobian(defense, u)) is not None}
    if not have[first] or not have[second]:
        return None
    common = [u for u in ("normalized", "pixel") if u in have[first] and u in have[second]]
    if not common:
        shown = ", ".join(f"{d} in {'/'.join(have[d])} units" for d in (first, second))
        return f"not comparable: ||J|| units differ ({shown}); a ratio across units is off by 1/std"
    x, y = have[first][common[0]], have[second][common[0]]
    if x.shape[1] != y.shape[1]:
        return f"not comparable: ||J|| measured on a different n ({first} {x.shape[1]}, {second} {y.shape[1]})"
    return x, y, common[0]
