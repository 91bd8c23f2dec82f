"""Claims and `compare` on synthetic stores (no training): seeds, like with like, Holm, claim 5's
comparators, and a row key read from two files counting once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from robench.claims import CLAIMS_COLUMNS, study_claims
from robench.cli import cli
from robench.reproduce import ReproduceConfig
from robench.results import append_rows, merge

N = 120
EPS = (0.0, 0.1, 0.2)
# a defense's robust accuracy at ε > 0 (the same at both ε, for simplicity)
LEVELS = {"none": 0.10, "jr": 0.30, "base": 0.20, "base+adv": 0.35, "base+jr": 0.45, "base+jr+adv": 0.75,
          "pgd-at": 0.95}  # fmt: skip


def _rows(model_hash: str, defense: str, robust: dict[float, np.ndarray], *, attack: str = "fgsm", spec: str = "s1",
          seed: int = 0) -> list[dict]:  # fmt: skip
    return [dict(model=f"runs/{model_hash}", dataset="mnist", defense=defense, attack=attack, norm="linf", epsilon=eps,
                 accuracy=float(np.mean(r)), n=len(r), seed=seed, attack_params="{}", robench_version="test",
                 timestamp="t", model_hash=model_hash, spec_hash=spec, value=float("nan"), _robust=np.asarray(r, float))
            for eps, r in robust.items()]  # fmt: skip


def _jacobian(model_hash: str, defense: str, norms: np.ndarray, units: str = "normalized") -> dict:
    attack = "jacobian_norm_normalized" if units == "normalized" else "jacobian_norm"
    return dict(model=f"runs/{model_hash}", dataset="mnist", defense=defense, attack=attack, norm="l2", epsilon=0.0,
                accuracy=1.0, n=len(norms), seed=0, attack_params="{}", robench_version="test", timestamp="t",
                model_hash=model_hash, spec_hash="jac", value=float(norms.mean()), _robust=np.ones(len(norms)),
                _value=norms)  # fmt: skip


def _study(tmp_path, monkeypatch, defenses, seeds, *, tweak=None, jacobian_units=None):
    """A results store for `defenses` x `seeds` with outcomes drawn around LEVELS (seed-to-seed spread
    of 2 points), and the study's run hashes; `tweak(defense, seed, rows)` may change a model's rows."""
    rng = np.random.default_rng(7)
    hardness = rng.random(N)
    config = ReproduceConfig(defenses=tuple(defenses), seeds=tuple(seeds), model="mlp", device="cpu")
    rows, hashes = [], {}
    for defense in defenses:
        for seed in seeds:
            model_hash = f"{defense}-{seed}".replace("+", "p") + "0000"
            hashes[config.run_name(defense, seed)] = model_hash
            level = LEVELS[defense] + rng.normal(0, 0.02)
            robust = {eps: (np.ones(N) if eps == 0 else (hardness < level + rng.normal(0, 0.05, N))) for eps in EPS}
            mine = _rows(model_hash, defense, robust)
            if tweak:
                mine = tweak(defense, seed, mine)
            rows += mine
            units = (jacobian_units or {}).get(defense, "normalized")
            scale = 1.0 if defense == "jr" else 20.0
            rows.append(_jacobian(model_hash, defense, scale * (1 + hardness), units))
    append_rows(tmp_path / "results.csv", rows)
    monkeypatch.setattr("robench.bundle.run_hashes", lambda out: hashes)
    claims = study_claims(config, tmp_path, tmp_path / "results.csv")
    assert list(claims.columns) == CLAIMS_COLUMNS
    return claims.set_index("claim_id")


def test_five_seeds_decide_and_claim_5_ignores_pgd_at(tmp_path, monkeypatch):
    defenses = ["none", "jr", "base", "base+adv", "base+jr", "base+jr+adv", "pgd-at"]
    claims = _study(tmp_path, monkeypatch, defenses, range(5))
    assert claims.loc["5a", "verdict"] == "holds", claims.loc["5a"].to_dict()
    assert "pgd-at" not in claims.loc["5a", "evidence"] and "base+jr" in claims.loc["5a", "evidence"]
    assert claims.loc["5a-pgd-at", "verdict"] == "does not hold"  # its own row, not a changed claim 5
    assert claims.loc["5a-pgd-at", "source"] == "beyond the paper"
    assert claims.loc["4a", "verdict"] == "holds" and claims.loc["1a", "verdict"] == "holds"
    assert "two-level bootstrap" in claims.loc["5a", "method"] and claims.loc["5a", "seeds"] == 5
    assert "Holm" in claims.loc["5a", "evidence"]
    assert claims.loc["1a", "estimate"] == pytest.approx(20.0)
    assert "normalized" in claims.loc["1a", "measure"]


def test_under_three_seeds_a_defense_comparison_is_inconclusive(tmp_path, monkeypatch):
    claims = _study(tmp_path, monkeypatch, ["none", "jr", "base", "base+adv", "base+jr", "base+jr+adv"], range(2))
    for claim_id in ("1a", "1b", "2", "4a", "5a", "5w"):
        row = claims.loc[claim_id]
        assert row["verdict"] in ("inconclusive", "not measured"), (claim_id, row.to_dict())
    assert claims.loc["5a", "verdict"] == "inconclusive"  # the images alone would say holds
    assert claims.loc["5a", "ci_low"] > 0
    assert "seed variation not measured" in claims.loc["5a", "seeds_note"]
    assert "images only" in claims.loc["5a", "method"]


def test_a_mismatched_n_or_spec_is_refused_in_one_line(tmp_path, monkeypatch):
    def fewer_images(defense, seed, rows):
        if defense == "base" and seed == 1:
            return [{**r, "n": 100, "accuracy": float(np.mean(r["_robust"][:100])), "_robust": r["_robust"][:100]}
                    for r in rows]  # fmt: skip
        return rows

    claims = _study(tmp_path, monkeypatch, ["base", "base+adv", "base+jr", "base+jr+adv"], range(3), tweak=fewer_images)
    row = claims.loc["5a"]
    assert row["verdict"] == "not comparable" and "\n" not in row["evidence"]
    assert "n (test images) differ" in row["evidence"] and "(100: base-s1; 120: " in row["evidence"]
    assert claims.loc["4a", "verdict"] != "not comparable"  # base is not part of claim 4


def test_a_mismatched_spec_is_refused(tmp_path, monkeypatch):
    def other_spec(defense, seed, rows):
        return [{**r, "spec_hash": "s2"} for r in rows] if defense == "base+adv" else rows

    claims = _study(tmp_path, monkeypatch, ["base", "base+adv", "base+jr", "base+jr+adv"], range(3), tweak=other_spec)
    assert claims.loc["4a", "verdict"] == "not comparable"
    assert "attack spec hashes differ" in claims.loc["4a", "evidence"]


def test_jacobian_in_different_units_is_refused(tmp_path, monkeypatch):
    claims = _study(tmp_path, monkeypatch, ["none", "jr"], range(3), jacobian_units={"jr": "pixel"})
    assert claims.loc["1a", "verdict"] == "not comparable" and "units differ" in claims.loc["1a", "evidence"]
    assert np.isnan(claims.loc["1a", "estimate"])


# ------------------------------------------------------------------------------------------- compare


def _two_models(path, *, a_level=0.6, b_level=0.3, n=100, spec="s1", same=False):
    rng = np.random.default_rng(3)
    a = rng.random(n) < a_level
    b = a.copy() if same else rng.random(n) < b_level
    append_rows(path, _rows("aaaa0000", "jr=0.01", {0.0: np.ones(n), 0.1: a})
                + _rows("bbbb0000", "none", {0.0: np.ones(n), 0.1: b}, spec=spec))  # fmt: skip


def _compare(*args):
    return CliRunner().invoke(cli, ["compare", *map(str, args)], catch_exceptions=False)


def test_a_merged_store_with_its_source_counts_once(tmp_path):
    source = tmp_path / "a.csv"
    _two_models(source)
    merged = tmp_path / "merged.csv"
    merge([source], merged)
    alone = _compare("aaaa", "bbbb", "--results", source)
    both = _compare("aaaa", "bbbb", "--results", merged, "--results", source)
    assert alone.exit_code == 0, alone.output
    assert both.output == alone.output  # before: each outcome twice, an interval as if from 200 images
    from robench.results import outcomes
    from robench.results.compare import unique_outcomes

    doubled = pd.concat([outcomes(merged), outcomes(source)], ignore_index=True)
    assert len(unique_outcomes(doubled)) == len(doubled) // 2


def test_no_disagreeing_pair_prints_an_interval_not_a_point(tmp_path):
    _two_models(tmp_path / "r.csv", same=True)
    result = _compare("aaaa", "bbbb", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0 and "[0.0, 0.0]" not in result.output and "+0.0" in result.output


def test_a_mismatched_spec_or_n_is_one_line_not_a_number(tmp_path):
    _two_models(tmp_path / "spec.csv", spec="s2")
    result = _compare("aaaa", "bbbb", "--results", tmp_path / "spec.csv")
    assert result.exit_code == 1 and "attack spec hashes differ" in result.output
    assert "points" not in result.output and len(result.output.strip().splitlines()) == 1
    rng = np.random.default_rng(0)
    append_rows(tmp_path / "n.csv", _rows("aaaa0000", "jr=0.01", {0.1: rng.random(100) < 0.5})
                + _rows("bbbb0000", "none", {0.1: rng.random(80) < 0.5}))  # fmt: skip
    result = _compare("aaaa", "bbbb", "--results", tmp_path / "n.csv")
    assert result.exit_code == 1 and "n (test images) differ" in result.output and "(100: aaaa; 80: bbbb)" in result.output


def test_compare_takes_seed_groups(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for defense, level in (("jr=0.01", 0.6), ("none", 0.3)):
        for seed in range(3):
            rows += _rows(f"{defense[:2]}{seed}0000", defense, {0.1: rng.random(100) < level + rng.normal(0, 0.03)})
    append_rows(tmp_path / "g.csv", rows)
    result = _compare("defense:jr=0.01", "no00000,no10000,no20000", "--results", tmp_path / "g.csv")
    assert result.exit_code == 0, result.output
    assert "two-level bootstrap" in result.output and "seeds A" in result.output
    two = _compare("jr00000,jr10000", "no00000,no10000", "--results", tmp_path / "g.csv")
    assert two.exit_code == 0 and "seed variation not measured" in two.output
    mixed = _compare("jr00000,no00000", "no10000", "--results", tmp_path / "g.csv")
    assert mixed.exit_code == 1 and "mixes defenses" in mixed.output


def test_claim_6_reads_certified_rows_where_the_study_has_them(tmp_path, monkeypatch):
    """JR against no defense on certify-crown's per-example verdicts (robust 1 only where certified): five seeds
    where JR certifies far more holds; without certification rows the claim is "not measured"."""
    rng = np.random.default_rng(3)

    def certified(defense, seed, rows):
        share = 0.6 if defense == "jr" else 0.2
        robust = {eps: (np.ones(N) if eps == 0 else rng.random(N) < share) for eps in EPS}
        return rows + _rows(rows[0]["model_hash"], defense, robust, attack="certify-crown", spec="c1")

    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    claims = _study(tmp_path / "with", monkeypatch, ["none", "jr"], range(5), tweak=certified)
    assert claims.loc["6", "verdict"] == "holds", claims.loc["6"].to_dict()
    assert "certify-crown" in claims.loc["6", "measure"] and claims.loc["6", "source"] == "beyond the paper"
    plain = _study(tmp_path / "without", monkeypatch, ["none", "jr"], range(5))
    assert plain.loc["6", "verdict"] == "not measured" and "certify-crown" in plain.loc["6", "evidence"]
