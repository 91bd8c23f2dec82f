"""Intervals and paired tests through scipy.stats: what makes an accuracy on n images a checkable number.

- `proportion_ci`: the exact (Clopper-Pearson) 95% interval of an accuracy on n examples. Outcomes of
  repeated noise are fractions in [0, 1] (the share of draws an example survived); their sum k is then
  not an integer, and the interval used is the union of the Clopper-Pearson intervals at floor(k) and
  ceil(k). A [0, 1]-valued outcome with mean p has variance at most p(1 - p), that of a Bernoulli
  outcome, so this interval is conservative for them too.
- `paired_difference`: two models on the same images. The difference in accuracy, a 95% interval
  (Student's t on the per-example differences, `scipy.stats.ttest_rel`), and the exact McNemar
  p-value: a two-sided binomial test of the discordant examples (`scipy.stats.binomtest`, p = 1/2).
  For fractional outcomes (noise) there is no McNemar test; the p-value is then the paired t-test's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


def proportion_ci(accuracy: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial interval of `accuracy` measured on `n` examples (NaN, NaN if it is unknown)."""
    from scipy.stats import binomtest

    if not (isinstance(n, (int, np.integer)) and n >= 1) or not math.isfinite(accuracy) or not 0 <= accuracy <= 1:
        return math.nan, math.nan
    k = accuracy * n
    lo_k, hi_k = (round(k), round(k)) if abs(k - round(k)) < 1e-6 else (math.floor(k), math.ceil(k))
    low = binomtest(int(lo_k), int(n)).proportion_ci(confidence_level=level, method="exact").low
    high = binomtest(int(hi_k), int(n)).proportion_ci(confidence_level=level, method="exact").high
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B on the same n examples.

    Args:
        difference: accuracy(A) - accuracy(B), in [-1, 1].
        low, high: its 95% interval.
        p_value: exact McNemar (binary outcomes) or paired t-test (fractional outcomes).
        a_only, b_only: examples robust for A but not B, and the reverse (discordant; binary outcomes).
        n: examples compared.
        test: "mcnemar-exact" or "paired-t".
    """

    difference: float
    low: float
    high: float
    p_value: float
    a_only: int
    b_only: int
    n: int
    test: str


def paired_difference(a, b, level: float = LEVEL) -> PairedDifference:
    """Compare per-example outcomes `a` and `b` (arrays in [0, 1], same examples in the same order)."""
    from scipy.stats import binomtest, ttest_rel

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired outcomes must be two non-empty vectors of the same length")
    d = a - b
    diff = float(d.mean())
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    a_only, b_only = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    if np.all(d == d[0]):  # no spread: the t interval is undefined; the difference is the same everywhere
        low = high = diff
        t_p = 1.0 if diff == 0 else 0.0
    else:
        test = ttest_rel(a, b)
        ci = test.confidence_interval(confidence_level=level)
        low, high, t_p = float(ci.low), float(ci.high), float(test.pvalue)
    if binary:
        p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
        return PairedDifference(diff, low, high, p, a_only, b_only, len(a), "mcnemar-exact")
    return PairedDifference(diff, low, high, t_p, a_only, b_only, len(a), "paired-t")


def format_p(p: float) -> str:
    """p < 1e-6 below that, else two significant digits."""
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 1e-6" if p < 1e-6 else f"p = {p:.2g}"
