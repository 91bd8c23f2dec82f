"""Judging a defense, not one model: intervals over training seeds and test images together.

A defense's robust accuracy varies with the training seed as well as with the test images; an
interval over images alone (each image's outcome averaged over seeds) leaves the first out, and
FGSM-trained models can differ between seeds by more than that interval is wide. Here the outcomes
of each defense are a seeds x images matrix (the same images, in the same order, for every model).

Method: a two-level bootstrap. The images are resampled once for all defenses (they are paired);
the seeds of each defense are resampled independently. Resampling whole seed rows would count the
image noise twice (a seed's mean over n images carries it as well), which makes the interval up to
1.5x too wide when seeds barely differ; so, following Carpenter, Goldstein & Rasbash (2003, JRSS C
52:431-443), the seed level resamples each seed's deviation from the defense's mean, rescaled so
that its variance is the two-way ANOVA estimate of the seed variance component
(var(seed means) - residual mean square / n, at least 0). Each level is resampled on its own, which
gives the statistic's variance per level; their sum is its variance, and the interval is the
estimate ± t·sd with Satterthwaite's degrees of freedom (n - 1 for images, k - 1 for k seeds): with
3-5 seeds a normal or percentile interval would be too narrow. For a difference of accuracies the
interval is never narrower than the per-image interval of the seed-averaged outcomes
(`stats.paired_difference`), so it cannot collapse to a point, and its p-value is never smaller than
that interval's test (McNemar or paired t; for one defense's level, the exact binomial test).
Coverage, on synthetic outcomes with a seed effect as large as the image effect, is measured in
tests/test_stats.py (5 seeds: about 94% at 1.1x the width of the interval that knows the variance).

With fewer than `MIN_SEEDS` seeds on a side the seed variance is not measured: the result is the
per-image interval of the seed-averaged outcomes and says so (`seed_aware` False); a verdict between
defenses must then read inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .stats import LEVEL, paired_difference, proportion_ci

MIN_SEEDS = 3  # fewer seeds than this per defense: seed variation is not measured
RESAMPLES = 1000
TWO_LEVEL = "two-level bootstrap over seeds and images (t, Satterthwaite df)"


@dataclass(frozen=True)
class DefenseEstimate:
    """A statistic of one or two defenses, its interval and p-value against `threshold`.

    Args:
        estimate, low, high: the statistic and its 95% interval.
        p_value: two-sided, for "the statistic equals `threshold`".
        threshold: what the p-value tests against.
        n: test images.
        seeds: seeds per defense.
        seed_aware: whether the interval includes seed-to-seed variation (at least MIN_SEEDS per side).
        method: how the interval was made, in words for a table or a note.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    threshold: float
    n: int
    seeds: tuple[int, ...]
    seed_aware: bool
    method: str


def seeds_note(seeds: tuple[int, ...]) -> str:
    """'' when every side has MIN_SEEDS seeds, else the sentence that says seed variation is not measured."""
    if min(seeds) >= MIN_SEEDS:
        return ""
    return (f"seed variation not measured ({'/'.join(str(s) for s in seeds)} seeds; "
            f"at least {MIN_SEEDS} per defense are needed)")  # fmt: skip


def _seed_deviations(y: np.ndarray) -> np.ndarray:
    """Each seed's deviation from the defense's mean, rescaled to the seed variance component."""
    k, n = y.shape
    rows = y.mean(axis=1)
    deviation = rows - rows.mean()
    spread = float((deviation**2).mean())
    if k < 2 or n < 2 or spread == 0:
        return np.zeros(k)
    residual = y - rows[:, None] - y.mean(axis=0)[None, :] + y.mean()
    mean_square = float((residual**2).sum()) / ((k - 1) * (n - 1))
    component = max(0.0, float(rows.var(ddof=1)) - mean_square / n)
    return deviation * math.sqrt(component / spread)


def two_level(groups: list[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray], *,
              resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """(estimate, variance, Satterthwaite df) of `statistic` over `groups` (seeds x images each, the same
    images). `statistic` maps an (R, G) array of the groups' means to R values."""
    rng = np.random.default_rng(seed)
    n = groups[0].shape[1]
    columns = np.stack([g.mean(axis=0) for g in groups])  # (G, n): each image averaged over seeds
    means = columns.mean(axis=1)
    estimate = float(statistic(means[None, :])[0])
    draws = []
    for start in range(0, resamples, 200):  # images, resampled together (paired); 200 at a time
        index = rng.integers(0, n, size=(min(200, resamples - start), n))
        draws.append(np.stack([c[index].mean(axis=1) for c in columns], axis=1))
    parts = [float(np.var(statistic(np.concatenate(draws)), ddof=1))]
    dfs = [n - 1]
    for g, y in enumerate(groups):  # each defense's seeds, resampled on their own
        deviation = _seed_deviations(y)
        picked = deviation[rng.integers(0, len(deviation), size=(resamples, len(deviation)))].mean(axis=1)
        shifted = np.repeat(means[None, :], resamples, axis=0)
        shifted[:, g] += picked
        parts.append(float(np.var(statistic(shifted), ddof=1)))
        dfs.append(len(deviation) - 1)
    variance = sum(parts)
    denominator = sum(p * p / d for p, d in zip(parts, dfs) if d > 0 and p > 0)
    df = variance**2 / denominator if denominator > 0 else math.inf
    return estimate, variance, df


def _t_interval(estimate: float, variance: float, df: float, threshold: float) -> tuple[float, float, float]:
    from scipy.stats import t

    sd = math.sqrt(variance)
    quantile = float(t.ppf(0.5 + LEVEL / 2, df))
    if sd == 0:
        return estimate, estimate, 1.0 if estimate == threshold else 0.0
    return estimate - quantile * sd, estimate + quantile * sd, float(2 * t.sf(abs(estimate - threshold) / sd, df))


def _check(*groups: np.ndarray) -> list[np.ndarray]:
    out = [np.atleast_2d(np.asarray(g, dtype=float)) for g in groups]
    if any(g.ndim != 2 or g.size == 0 for g in out) or len({g.shape[1] for g in out}) != 1:
        raise ValueError("each defense needs a seeds x images matrix, all on the same images")
    return out


def defense_difference(a, b, *, threshold: float = 0.0, resamples: int = RESAMPLES, seed: int = 0) -> DefenseEstimate:
    """Defense A minus defense B in mean accuracy (seeds x images each, the same images)."""
    a, b = _check(a, b)
    seeds = (len(a), len(b))
    images = paired_difference(a.mean(axis=0), b.mean(axis=0))
    if min(seeds) < MIN_SEEDS:
        p = images.p_value if threshold == 0 else math.nan
        return DefenseEstimate(images.difference, images.low, images.high, p, threshold, a.shape[1], seeds, False,
                               f"images only ({images.interval}, outcomes averaged over seeds): {seeds_note(seeds)}")  # fmt: skip
    estimate, variance, df = two_level([a, b], lambda m: m[:, 0] - m[:, 1], resamples=resamples, seed=seed)
    low, high, p = _t_interval(estimate, variance, df, threshold)
    if threshold == 0:  # the floor's test too: no smaller p than the images alone allow
        p = max(p, images.p_value)
    return DefenseEstimate(estimate, min(low, images.low), max(high, images.high), p, threshold, a.shape[1], seeds,
                           True, TWO_LEVEL)  # fmt: skip


def defense_level(a, *, threshold: float, resamples: int = RESAMPLES, seed: int = 0) -> DefenseEstimate:
    """One defense's mean accuracy (seeds x images), never narrower than Clopper-Pearson over the images."""
    (a,) = _check(a)
    mean, n = float(a.mean()), a.shape[1]
    floor = proportion_ci(mean, n)
    if len(a) < MIN_SEEDS:
        return DefenseEstimate(mean, *floor, math.nan, threshold, n, (len(a),), False,
                               f"images only (Clopper-Pearson, outcomes averaged over seeds): {seeds_note((len(a),))}")  # fmt: skip
    from scipy.stats import binomtest

    estimate, variance, df = two_level([a], lambda m: m[:, 0], resamples=resamples, seed=seed)
    low, high, p = _t_interval(estimate, variance, df, threshold)
    if 0 < threshold < 1:  # the floor's test too: the exact binomial test over the images
        p = max(p, float(binomtest(int(round(mean * n)), n, threshold).pvalue))
    return DefenseEstimate(estimate, min(low, floor[0]), max(high, floor[1]), p, threshold, n, (len(a),), True, TWO_LEVEL)


def defense_ratio(a, b, *, threshold: float, resamples: int = RESAMPLES, seed: int = 0) -> DefenseEstimate:
    """mean(A) / mean(B) of positive values (e.g. ||J||_F), interval taken on the log scale."""
    a, b = _check(a, b)
    seeds = (len(a), len(b))
    if min(seeds) < MIN_SEEDS:  # images only: the seeds collapsed into one mean per image
        a, b = a.mean(axis=0, keepdims=True), b.mean(axis=0, keepdims=True)
    estimate, variance, df = two_level([a, b], lambda m: np.log(m[:, 0] / m[:, 1]), resamples=resamples, seed=seed)
    low, high, p = _t_interval(estimate, variance, df, math.log(threshold))
    aware = min(seeds) >= MIN_SEEDS
    method = TWO_LEVEL + " on log(ratio)" if aware else f"bootstrap over images on log(ratio): {seeds_note(seeds)}"
    return DefenseEstimate(math.exp(estimate), math.exp(low), math.exp(high), p, threshold, a.shape[1], seeds, aware, method)
