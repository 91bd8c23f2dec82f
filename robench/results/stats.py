"""Intervals and paired tests through scipy.stats: what makes an accuracy on n images a checkable number.

- `proportion_ci`: the exact (Clopper-Pearson) 95% interval of an accuracy on n examples. Outcomes of
  repeated noise are fractions in [0, 1] (the share of draws an example survived); their sum k is then
  not an integer, and the interval used is the union of the Clopper-Pearson intervals at floor(k) and
  ceil(k). A [0, 1]-valued outcome with mean p has variance at most p(1 - p), that of a Bernoulli
  outcome, so this interval is conservative for them too.
- `paired_difference`: two models on the same images. The difference in accuracy; its 95% interval
  by Newcombe's method 10 (`newcombe_paired`: the Wilson score intervals of the two accuracies,
  combined through their correlation; Newcombe 1998, Statistics in Medicine 17:2635-2650), which
  stays honest with few or no discordant examples: with none, 100 images give ±1.9 to ±3.7 points, not
  [0, 0]; and the exact McNemar p-value, a two-sided binomial test of the discordant examples
  (`scipy.stats.binomtest`, p = 1/2). Fractional outcomes (noise, or outcomes averaged over seeds)
  have no McNemar test: the p-value and the interval are the paired t-test's; when fewer than
  `FEW_DIFFER` examples differ at all (where the t interval shrinks towards a point) the interval is
  widened to method 10 on the table of expected counts (sums of a·b, a·(1 - b), ...), which treats each
  fraction as a coin and is conservative (see `proportion_ci`).
- `holm`: Holm's step-down adjustment of p-values, for a verdict that rests on several comparisons.

The intervals over seeds *and* images (a defense rather than one model) are in `seeds.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
FEW_DIFFER = 10  # fractional outcomes: below this many differing examples, method 10 widens the t interval


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


def wilson(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of k successes in n (k may be fractional: an expected count)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def newcombe_paired(both: float, a_only: float, b_only: float, neither: float,
                    level: float = LEVEL) -> tuple[float, float]:  # fmt: skip
    """Newcombe's method 10 interval for p_A - p_B from a paired 2x2 table.

    Args:
        both, a_only, b_only, neither: examples robust for both models, for A alone, for B alone, for
            neither (Newcombe's e, f, g, h; fractional expected counts are accepted).
    The Wilson intervals (l1, u1) of p_A and (l2, u2) of p_B are combined as
    θ - sqrt((p_A - l1)² - 2φ(p_A - l1)(u2 - p_B) + (u2 - p_B)²) and the mirror image for the upper
    limit, with φ the phi coefficient of the table, its numerator ad - bc moved n/2 towards 0 (and 0
    when it is between 0 and n/2), and φ = 0 when a margin is empty (Newcombe 1998; Fagerland,
    Lydersen and Laake 2017, section 8.5).
    """
    n = both + a_only + b_only + neither
    if n <= 0:
        return math.nan, math.nan
    p_a, p_b = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson(both + a_only, n, level)
    l2, u2 = wilson(both + b_only, n, level)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - a_only * b_only
        cross = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = cross / math.sqrt(margins)
    theta = p_a - p_b
    low = theta - math.sqrt(max(0.0, (p_a - l1) ** 2 - 2 * phi * (p_a - l1) * (u2 - p_b) + (u2 - p_b) ** 2))
    high = theta + math.sqrt(max(0.0, (u1 - p_a) ** 2 - 2 * phi * (u1 - p_a) * (p_b - l2) + (p_b - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B on the same n examples.

    Args:
        difference: accuracy(A) - accuracy(B), in [-1, 1].
        low, high: its 95% interval (see `interval`).
        p_value: exact McNemar (binary outcomes) or paired t-test (fractional outcomes).
        a_only, b_only: examples robust for A but not B, and the reverse (discordant; binary outcomes).
        n: examples compared.
        test: "mcnemar-exact" or "paired-t".
        interval: "newcombe-10" (binary), "paired-t" (fractional), or "paired-t+newcombe-10" (fractional,
            fewer than FEW_DIFFER examples differ: the union of both).
    """

    difference: float
    low: float
    high: float
    p_value: float
    a_only: int
    b_only: int
    n: int
    test: str
    interval: str = "newcombe-10"


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
    if binary:
        low, high = newcombe_paired(int((a * b).sum()), a_only, b_only, int(((1 - a) * (1 - b)).sum()), level=level)
        p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
        return PairedDifference(diff, low, high, p, a_only, b_only, len(a), "mcnemar-exact", "newcombe-10")
    low = high = diff
    t_p = 1.0 if diff == 0 else 0.0
    if not np.all(d == d[0]):  # with no spread there is no t interval
        test = ttest_rel(a, b)
        ci = test.confidence_interval(confidence_level=level)
        low, high, t_p = float(ci.low), float(ci.high), float(test.pvalue)
    if int((d != 0).sum()) >= FEW_DIFFER:
        return PairedDifference(diff, low, high, t_p, a_only, b_only, len(a), "paired-t", "paired-t")
    table = [float(v.sum()) for v in (a * b, a * (1 - b), (1 - a) * b, (1 - a) * (1 - b))]
    floor = newcombe_paired(*table, level=level)
    return PairedDifference(diff, min(low, floor[0]), max(high, floor[1]), t_p, a_only, b_only, len(a), "paired-t",
                            "paired-t+newcombe-10")  # fmt: skip


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): reject where the adjusted p < α, and
    the chance of any false rejection among them stays below α."""
    p = np.asarray(list(p_values), dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def format_p(p: float) -> str:
    """p < 1e-6 below that, else two significant digits."""
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 1e-6" if p < 1e-6 else f"p = {p:.2g}"
