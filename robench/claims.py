"""The paper's claims, each checked against a study's own numbers: claims.md and claims.csv.

Each claim becomes one row: what the paper says, the measure robench uses for it, the estimate with
its 95% interval, and a verdict:
    holds             the whole interval is on the claim's side of its threshold
    does not hold     the whole interval is on the other side
    inconclusive      the interval straddles the threshold: more images or seeds are needed
    not measured      the study lacks a defense or an attack the claim needs (the row says which)

Measures (each per test image, averaged over the study's seeds, so seeds and images both count):
- robustness of a defense under an attack: the image's accuracy averaged over the attack's ε > 0 grid
  (the mean height of the curve, i.e. its AUC per unit ε); "A beats B" is the paired difference A - B
  over images, with a Student-t interval (`robench.results.stats.paired_difference`). "A is the most
  robust of S" holds when A beats every other member (its closest competitor is shown), and does not
  hold when some member beats A.
- ||J||_F: the ratio of the mean test norms (the paper's normalized units), with a paired bootstrap
  interval over images (scipy.stats.bootstrap, BCa).
- clean accuracy: per image, from the store's ε = 0 outcomes (at ε = 0 every attack's outcome is
  clean correctness; of a model's ε = 0 rows the one on the most images counts: all 10,000 in the
  paper's protocol, the first --n otherwise); only a model without them is recomputed from its
  weights, on the full test set it was trained against. "About 99%" reads as at least 98.5% (pooled
  Clopper-Pearson interval over seeds), "no loss" as a paired difference of at least -0.5 points.

The model hashes that pick each run's rows come from the study's bundle.json when it has one (a
study merged from slices holds no weights: robench/slices.py), else from the weights themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RobenchError


CLAIMS_COLUMNS = ["claim_id", "claim", "source", "measure", "estimate", "ci_low", "ci_high", "threshold",
                  "n", "seeds", "verdict", "evidence"]  # fmt: skip
ABOUT_99 = 0.985  # "about 99% clean accuracy"
NO_LOSS = -0.005  # "no loss of clean accuracy": a paired difference of at least -0.5 points
JACOBIAN_FACTOR = 10.0  # "more than an order of magnitude"
SINGLE = ("none", "l2", "dropout", "jr")  # Table 1's single defenses, with the undefended model


@dataclass
class Claim:
    """One row of the claims table (see the module docstring for the verdicts)."""

    claim_id: str
    claim: str
    source: str
    measure: str = ""
    estimate: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    threshold: float = math.nan
    n: int = 0
    seeds: int = 0
    verdict: str = "not measured"
    evidence: str = ""


def _verdict(low: float, high: float, threshold: float) -> str:
    """Above the threshold: holds; wholly below: does not hold; straddling: inconclusive."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > threshold:
        return "holds"
    if high < threshold:
        return "does not hold"
    return "inconclusive"


def _all_hold(verdicts: list[str]) -> str:
    """A claim over several comparisons: holds if each one does, does not hold if any one does not."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "inconclusive"


class Evidence:
    """The study's numbers, per defense name: model hashes per seed, per-image outcomes, clean predictions.

    A study with a bundle.json (merged from slices) names its models there, and runs it lacks are
    left out (a defense without any is missing from the study); otherwise the weights are hashed.
    """

    def __init__(self, config, out: Path, csv: Path):
        from .bundle import run_hashes
        from .results import outcomes, read_results
        from .results.select import current_rows
        from .sources import file_hash

        self.config, self.out = config, out
        self.runs = {d: [config.run_name(d, s) for s in config.seeds] for d in config.defenses}
        known = run_hashes(out)
        if known is None:
            self.hashes = {d: [file_hash(out / "runs" / r / "model.safetensors") for r in runs]
                           for d, runs in self.runs.items()}  # fmt: skip
        else:
            self.runs = {d: [r for r in runs if r in known] for d, runs in self.runs.items()}
            self.runs = {d: runs for d, runs in self.runs.items() if runs}
            self.hashes = {d: [known[r] for r in runs] for d, runs in self.runs.items()}
        self.rows = current_rows(read_results(csv))
        self.table = outcomes(csv)
        self._clean: dict[str, np.ndarray] = {}
        self._test_set = None
        self.clean_sources: set[str] = set()  # where clean correctness came from, for the claims' measure

    def has(self, *defenses: str) -> list[str]:
        """The defenses of these the study lacks."""
        return [d for d in defenses if d not in self.hashes]

    def scores(self, defense: str, attack: str, norm: str) -> tuple[np.ndarray, list[float]] | None:
        """Per image: accuracy averaged over the attack's ε > 0 and the seeds; and the ε used."""
        rows = self.rows[(self.rows["attack"] == attack) & (self.rows["norm"] == norm) & (self.rows["epsilon"] > 0)]
        per_seed = []
        eps_sets = []
        for model_hash in self.hashes[defense]:
            mine = rows[rows["model_hash"] == model_hash]
            if mine.empty:
                return None
            sub = self.table[(self.table["model_hash"] == model_hash) & (self.table["attack"] == attack)
                             & (self.table["norm"] == norm) & (self.table["n"] == mine["n"].max())
                             & (self.table["spec_hash"].isin(mine["spec_hash"]))]  # fmt: skip
            sub = sub[sub["epsilon"].round(9).isin(mine["epsilon"].round(9))]
            if sub.empty:
                return None
            matrix = sub.pivot_table(index="example", columns="epsilon", values="robust", aggfunc="last")
            per_seed.append(matrix)
            eps_sets.append(set(matrix.columns))
        common = sorted(set.intersection(*eps_sets))
        n = min(len(m) for m in per_seed)
        if not common or n == 0:
            return None
        stacked = np.stack([m[common].to_numpy(float)[:n].mean(axis=1) for m in per_seed])
        return stacked.mean(axis=0), common

    def jacobian(self, defense: str) -> tuple[np.ndarray, str] | None:
        """Per image: the exact test ||J||_F averaged over seeds, in normalized units when recorded."""
        for attack, units in (("jacobian_norm_normalized", "normalized"), ("jacobian_norm", "pixel")):
            per_seed = []
            for model_hash in self.hashes[defense]:
                sub = self.table[(self.table["model_hash"] == model_hash) & (self.table["attack"] == attack)]
                if sub.empty:
                    break
                sub = sub[sub["n"] == sub["n"].max()].sort_values("example")
                per_seed.append(sub["value"].to_numpy(float))
            else:
                n = min(len(v) for v in per_seed)
                return np.mean([v[:n] for v in per_seed], axis=0), units
        return None

    def clean(self, defense: str) -> np.ndarray:
        """Per seed and image: clean correctness (seeds x images), from the store's ε = 0 outcomes, else
        recomputed from the weights; seeds measured on different numbers of images keep the first ones."""
        if defense not in self._clean:
            per_seed = [self.stored_clean(h) for h in self.hashes[defense]]
            per_seed = [v if v is not None else self.weights_clean(r) for v, r in zip(per_seed, self.runs[defense])]
            n = min(len(v) for v in per_seed)
            self._clean[defense] = np.stack([v[:n] for v in per_seed])
        return self._clean[defense]

    def stored_clean(self, model_hash: str) -> np.ndarray | None:
        """Clean correctness per image from the store: at ε = 0 an attack's outcome is exactly clean
        correctness (robench.attacks.fixed_eps_accuracy; the jacobian_norm rows record it too). Of the
        model's current ε = 0 rows the one on the most images counts (ties: by attack name)."""
        from .results import WORST_CASE
        from .results.select import is_cascade_step

        rows = self.rows[(self.rows["model_hash"] == model_hash) & (self.rows["epsilon"] == 0)
                         & (self.rows["attack"] != WORST_CASE) & ~self.rows["attack"].map(is_cascade_step)]  # fmt: skip
        for row in rows.sort_values(["n", "attack"], ascending=[False, True]).to_dict("records"):
            sub = self.table[(self.table["model_hash"] == model_hash) & (self.table["attack"] == row["attack"])
                             & (self.table["spec_hash"] == row["spec_hash"]) & (self.table["n"] == row["n"])
                             & (self.table["seed"] == row["seed"]) & (self.table["epsilon"] == 0)]  # fmt: skip
            if len(sub) == row["n"]:
                self.clean_sources.add(f"the first {int(row['n']):,} test images, the store's ε = 0 outcomes")
                return sub.sort_values("example")["robust"].to_numpy(float)
        return None

    def weights_clean(self, run: str) -> np.ndarray:
        """Clean correctness per image of the full test set the run was trained against, from its weights."""
        from .checkpoint import MODEL_FILE
        from .data import load_dataset
        from .metrics import predict
        from .sources import from_run

        if not (self.out / "runs" / run / MODEL_FILE).is_file():
            raise RobenchError(f"run {run} has no ε = 0 outcomes in the store and no weights to recompute them from")
        source = from_run(self.out / "runs" / run)
        if self._test_set is None:  # every run of a study is trained against the same test set
            config = source.meta["config"]
            self._test_set = load_dataset("mnist", "test", root=config.get("data_root"),
                                          subset=config.get("test_subset"))  # fmt: skip
        x, y = self._test_set
        self.clean_sources.add("the full test set, recomputed from the weights")
        return (predict(source.model.eval(), x) == y).numpy().astype(float)


def _beats(evidence: Evidence, a: str, others: list[str], attack: str, norm: str, what: str) -> dict[str, Any]:
    """A against each of `others` on the per-image robustness score: the closest competitor decides."""
    from .results.stats import paired_difference

    score_a = evidence.scores(a, attack, norm)
    if score_a is None:
        return {"missing": f"no {what} rows for {a}"}
    results = []
    for b in others:
        score_b = evidence.scores(b, attack, norm)
        if score_b is None:
            return {"missing": f"no {what} rows for {b}"}
        n = min(len(score_a[0]), len(score_b[0]))
        diff = paired_difference(score_a[0][:n], score_b[0][:n])
        results.append((b, diff, float(score_a[0][:n].mean()), float(score_b[0][:n].mean()), n))
    verdict = _all_hold([_verdict(d.low, d.high, 0.0) for _, d, *_ in results])
    b, diff, acc_a, acc_b, n = min(results, key=lambda r: r[1].difference)
    eps = ", ".join(f"{e:g}" for e in score_a[1])
    others_text = "; ".join(f"{o}: {100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
                            for o, d, *_ in results)  # fmt: skip
    return {
        "measure": f"{what}: paired difference in accuracy averaged over ε ∈ {{{eps}}}, {a} minus the closest other",
        "estimate": diff.difference, "ci_low": diff.low, "ci_high": diff.high, "threshold": 0.0, "n": n,
        "verdict": verdict,
        "evidence": f"{a} {acc_a:.3f} vs {b} {acc_b:.3f} (closest); differences in points: {others_text}",
    }


def _robustness_claims(evidence: Evidence) -> list[Claim]:
    """Claims 3-5 under the paper's attacks, then (beyond the paper) under the worst case."""
    specs = [
        ("3", "JR is the most robust single defense", "paper, Figure 3a", "jr",
         [d for d in SINGLE if d != "jr"], [("noise", "l2", "white noise")]),
        ("4", "base+jr beats base+adv (FGSM adversarial training)", "paper, Figure 3b-c", "base+jr",
         ["base+adv"], [("fgsm", "linf", "FGSM"), ("pgd", "linf", "PGD")]),
        ("5", "base+jr+adv is the most robust", "paper, Figure 3b-c", "base+jr+adv", None,
         [("fgsm", "linf", "FGSM"), ("pgd", "linf", "PGD")]),
    ]  # fmt: skip
    claims = []
    for claim_id, text, source, a, others, attacks in specs:
        if others is None:
            others = [d for d in evidence.config.defenses if d not in (a, "all")]
        worst = [("worst_case", "linf", "worst case over L∞ attacks")]
        for suffix, (attack, norm, what) in zip("abcw", attacks + worst):
            beyond = attack == "worst_case"
            claim = Claim(f"{claim_id}{'w' if beyond else suffix}", f"{text}, under {what}",
                          "beyond the paper" if beyond else source, seeds=len(evidence.config.seeds))
            missing = evidence.has(a, *others)
            found = {"missing": f"defenses not in the study: {', '.join(missing)}"} if missing else \
                _beats(evidence, a, others, attack, norm, what)  # fmt: skip
            if "missing" in found:
                claim.evidence = found["missing"]
            else:
                for key, value in found.items():
                    setattr(claim, key, value)
            claims.append(claim)
    return claims


def _jacobian_claim(evidence: Evidence) -> list[Claim]:
    """Claim 1: JR lowers test ||J||_F by more than 10x, with no loss of clean accuracy."""
    from scipy.stats import bootstrap

    from .results.stats import paired_difference

    seeds = len(evidence.config.seeds)
    ratio = Claim("1a", "JR lowers the test ||J||_F by more than 10x (none / jr)", "paper, Table 1", seeds=seeds)
    loss = Claim("1b", "JR costs no clean accuracy (jr - none)", "paper, Table 1", seeds=seeds)
    missing = evidence.has("none", "jr")
    if missing:
        ratio.evidence = loss.evidence = f"defenses not in the study: {', '.join(missing)}"
        return [ratio, loss]
    found = evidence.jacobian("none"), evidence.jacobian("jr")
    if None in found:
        ratio.evidence = "no jacobian_norm rows for none or jr"
    else:
        (none, units), (jr, _) = found
        n = min(len(none), len(jr))
        none, jr = none[:n], jr[:n]
        estimate = float(none.mean() / jr.mean())
        if n >= 2:
            ci = bootstrap((none, jr), lambda a, b, axis=-1: a.mean(axis=axis) / b.mean(axis=axis), paired=True,
                           vectorized=True, n_resamples=2000, random_state=0).confidence_interval  # fmt: skip
            low, high = float(ci.low), float(ci.high)
        else:
            low = high = math.nan
        ratio.measure = f"ratio of mean exact test ||J||_F ({units} units), paired bootstrap interval"
        ratio.estimate, ratio.ci_low, ratio.ci_high, ratio.threshold, ratio.n = estimate, low, high, JACOBIAN_FACTOR, n
        ratio.verdict = _verdict(low, high, JACOBIAN_FACTOR)
        ratio.evidence = f"mean ||J||_F none {none.mean():.2f}, jr {jr.mean():.2f} ({units} units, n={n})"
    clean_none, clean_jr = evidence.clean("none").mean(axis=0), evidence.clean("jr").mean(axis=0)
    n = min(len(clean_none), len(clean_jr))
    clean_none, clean_jr = clean_none[:n], clean_jr[:n]
    diff = paired_difference(clean_jr, clean_none)
    where = "; ".join(sorted(evidence.clean_sources))
    loss.measure = f"paired difference in clean test accuracy ({where}), threshold -0.5 points"
    loss.estimate, loss.ci_low, loss.ci_high, loss.threshold = diff.difference, diff.low, diff.high, NO_LOSS
    loss.n, loss.verdict = len(clean_jr), _verdict(diff.low, diff.high, NO_LOSS)
    loss.evidence = f"clean accuracy jr {clean_jr.mean():.4f}, none {clean_none.mean():.4f}"
    return [ratio, loss]


def _clean_claim(evidence: Evidence) -> Claim:
    """Claim 2: every defense keeps about 99% clean accuracy (the lowest-interval defense decides)."""
    from .results.stats import proportion_ci

    claim = Claim("2", "every defense keeps about 99% clean accuracy (at least 98.5%)", "paper, Table 1",
                  seeds=len(evidence.config.seeds), threshold=ABOUT_99)  # fmt: skip
    found = []
    for defense in (d for d in evidence.config.defenses if d in evidence.hashes):
        correct = evidence.clean(defense)
        low, high = proportion_ci(float(correct.mean()), int(correct.size))
        found.append((defense, float(correct.mean()), low, high, correct.shape[1]))
    claim.verdict = _all_hold([_verdict(lo, hi, ABOUT_99) for _, _, lo, hi, _ in found])
    worst = min(found, key=lambda f: f[2])
    claim.measure = "clean test accuracy pooled over seeds, Clopper-Pearson interval; the lowest defense"
    claim.estimate, claim.ci_low, claim.ci_high, claim.n = worst[1], worst[2], worst[3], worst[4]
    claim.evidence = "; ".join(f"{d} {acc:.4f} [{lo:.4f}, {hi:.4f}]" for d, acc, lo, hi, _ in found)
    return claim


def study_claims(config, out: str | Path, csv: str | Path) -> pd.DataFrame:
    """Every claim of the paper (and its worst-case versions) checked on a reproduction's results."""
    evidence = Evidence(config, Path(out), Path(csv))
    claims = _jacobian_claim(evidence) + [_clean_claim(evidence)] + _robustness_claims(evidence)
    return pd.DataFrame([{c: getattr(claim, c) for c in CLAIMS_COLUMNS} for claim in claims], columns=CLAIMS_COLUMNS)


def _number(value: float, percent: bool) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{100 * value:+.1f} pts" if percent else f"{value:.3g}"


def claims_markdown(claims: pd.DataFrame, context: str = "") -> str:
    """The claims table as markdown: verdict first, then the estimate with its interval and the evidence."""
    lines = ["# The paper's claims, checked", ""]
    if context:
        lines += [context, ""]
    lines += ["| # | claim | source | verdict | estimate [95% interval] | n × seeds | evidence |", "|---|---|---|---|---|---|---|"]
    for row in claims.to_dict("records"):
        percent = row["claim_id"][0] in "345" or row["claim_id"] == "1b"
        value = _number(row["estimate"], percent)
        if math.isfinite(row["ci_low"]):
            value += f" [{_number(row['ci_low'], percent)}, {_number(row['ci_high'], percent)}]"
        verdict = row["verdict"] + (" at this n" if row["verdict"] == "inconclusive" else "")
        cells = [row["claim_id"], row["claim"], row["source"], f"**{verdict}**", value,
                 f"{row['n']} × {row['seeds']}", f"{row['measure']}. {row['evidence']}".strip(". ")]  # fmt: skip
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines + [""])


def write_claims(claims: pd.DataFrame, out: str | Path, context: str = "") -> list[Path]:
    """claims.csv and claims.md under `out`, atomically."""
    from .fileio import write_atomic, write_text_atomic

    out = Path(out)
    csv, md = out / "claims.csv", out / "claims.md"
    write_atomic(csv, lambda tmp: claims.to_csv(tmp, index=False))
    write_text_atomic(md, claims_markdown(claims, context))
    return [md, csv]


__all__ = ["CLAIMS_COLUMNS", "Claim", "claims_markdown", "study_claims", "write_claims"]
