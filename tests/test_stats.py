"""Intervals that mean what they say: the paired interval against a published value, intervals that
never collapse, Holm's adjustment, and the two-level (seeds x images) interval's coverage."""

from __future__ import annotations

import numpy as np
import pytest

from robench.results.seeds import MIN_SEEDS, defense_difference, defense_level, defense_ratio
from robench.results.stats import holm, newcombe_paired, paired_difference


def _outcomes(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=float)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=float)
    return a, b


def test_method_10_matches_the_published_value():
    """Cavo et al. (2012), complete response before and after consolidation therapy: 59 both, 6 before
    only, 16 after only, 80 neither. Fagerland, Lydersen & Laake (2017), Statistical Analysis of
    Contingency Tables, chapter 8, print Newcombe's square-and-add (method 10) interval for it as
    -0.0621 (-0.1186 to -0.0046); the book's companion R package (contingencytables) tests the same."""
    low, high = newcombe_paired(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    diff = paired_difference(*_outcomes(59, 6, 16, 80))
    assert round(diff.difference, 4) == -0.0621 and (diff.low, diff.high) == pytest.approx((low, high))
    assert diff.interval == "newcombe-10" and diff.test == "mcnemar-exact"


def test_method_10_agrees_with_the_textbook_construction():
    """A second check, from the formula written out independently: Wilson limits of each margin,
    correlation with the numerator moved n/2 towards zero."""
    from scipy.stats import norm

    def wilson(k, n):
        z = norm.ppf(0.975)
        centre, half = k + z * z / 2, z * np.sqrt(k * (n - k) / n + z * z / 4)
        return (centre - half) / (n + z * z), (centre + half) / (n + z * z)

    for e, f, g, h in ((36, 12, 2, 0), (263, 15, 3, 19), (1, 1, 7, 12), (40, 3, 1, 6)):
        n = e + f + g + h
        p1, p2 = (e + f) / n, (e + g) / n
        (l1, u1), (l2, u2) = wilson(e + f, n), wilson(e + g, n)
        cross = e * h - f * g
        cross = cross - n / 2 if cross > n / 2 else (0 if cross >= 0 else cross)
        margins = (e + f) * (g + h) * (e + g) * (f + h)
        phi = cross / np.sqrt(margins) if margins else 0.0
        low = p1 - p2 - np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
        high = p1 - p2 + np.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
        assert newcombe_paired(e, f, g, h) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize("robust", [0, 50, 100])
def test_no_disagreeing_pair_is_not_certainty(robust):
    """The demo used to print '+0.0 points [0.0, 0.0], p = 1, n=100'."""
    diff = paired_difference(*_outcomes(robust, 0, 0, 100 - robust))
    assert diff.difference == 0 and diff.p_value == 1
    assert diff.low < -0.015 and diff.high > 0.015  # 100 images cannot pin a difference to a point
    one = paired_difference(*_outcomes(50, 1, 0, 49))
    assert one.low < 0 < one.high and one.high - one.low > 0.04


def test_fractional_outcomes_never_collapse_either():
    a = np.full(100, 0.5)
    diff = paired_difference(a, a)
    assert diff.test == "paired-t" and diff.low < 0 < diff.high
    b = a.copy()
    b[0] = 0.4  # one example differs: a t interval alone would be a sliver
    assert paired_difference(a, b).high - paired_difference(a, b).low > 0.02


def test_holm():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.02, 0.9]) == pytest.approx([0.04, 0.9])


def _simulate(rng, repetitions: int, seeds: int, images: int, true: float):
    """Binary outcomes of two defenses on the same images: a shared per-image difficulty, a per-seed
    shift of each model's accuracy whose standard deviation equals the standard error of one model
    pair's difference over the images (sqrt(2 p (1 - p) / n) at p = 1/2): a seed effect as large as
    the image effect."""
    width = np.sqrt(2 * 0.25 / images) * np.sqrt(3)  # uniform(-w, w) has sd w / sqrt(3)
    for _ in range(repetitions):
        p = rng.uniform(0.3, 0.7, size=images)
        a = rng.random((seeds, images)) < p + true + rng.uniform(-width, width, (seeds, 1))
        b = rng.random((seeds, images)) < p + rng.uniform(-width, width, (seeds, 1))
        yield a.astype(float), b.astype(float)


def _coverage(repetitions: int, images: int, resamples: int):
    rng, true = np.random.default_rng(20190806), 0.03
    two, one, widths, estimates = [], [], [], []
    for r, (a, b) in enumerate(_simulate(rng, repetitions, 5, images, true)):
        d = defense_difference(a, b, resamples=resamples, seed=r)
        i = paired_difference(a.mean(axis=0), b.mean(axis=0))
        two.append(d.low <= true <= d.high)
        one.append(i.low <= true <= i.high)
        widths.append(d.high - d.low)
        estimates.append(d.estimate)
    oracle = 2 * 1.959964 * np.std(estimates)  # the interval that knows the estimate's true spread
    return np.mean(two), np.mean(widths) / oracle, np.mean(one)


def test_two_level_interval_covers_where_the_image_interval_does_not():
    """5 seeds, 200 images, 500 repetitions, 300 resamples (about 2 s)."""
    covered, relative_width, image_only = _coverage(500, 200, 300)
    assert covered >= 0.90, covered
    assert relative_width <= 1.5, relative_width
    assert image_only < 0.80, image_only


def test_fewer_than_three_seeds_is_not_seed_aware():
    rng = np.random.default_rng(0)
    a, b = (rng.random((2, 50)) < 0.6).astype(float), (rng.random((2, 50)) < 0.4).astype(float)
    d = defense_difference(a, b)
    assert not d.seed_aware and "seed variation not measured" in d.method
    assert defense_difference(np.vstack([a, a[:1]]), np.vstack([b, b[:1]])).seed_aware == (MIN_SEEDS <= 3)
    assert not defense_level(a, threshold=0.5).seed_aware
    assert not defense_ratio(a + 1, b + 1, threshold=1.0).seed_aware


def test_seed_spread_widens_the_interval_and_the_ratio_is_on_the_right_scale():
    rng = np.random.default_rng(1)
    base = rng.uniform(1, 2, size=300)
    calm = np.stack([base * 10 * (1 + 0.01 * k) for k in range(5)])
    wild = np.stack([base * 10 * (1 + 0.3 * k) for k in range(5)])
    other = np.stack([base] * 5)
    narrow, wide = defense_ratio(calm, other, threshold=10.0), defense_ratio(wild, other, threshold=10.0)
    assert narrow.estimate == pytest.approx(calm.mean() / other.mean())
    assert narrow.low < narrow.estimate < narrow.high and wide.high - wide.low > 5 * (narrow.high - narrow.low)
    level = defense_level((rng.random((5, 400)) < 0.99).astype(float), threshold=0.985)
    assert level.seed_aware and 0.97 < level.low < level.estimate < level.high <= 1
