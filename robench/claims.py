"""The paper's claims, each checked against a study's own numbers: claims.md and claims.csv.

Each claim becomes one row: what the paper says, the measure robench uses for it, the estimate with
its 95% interval, how the interval was made (`method`), and a verdict:
    holds             the claim's comparisons all come out on its side (Holm over them; `claims_stats`)
    does not hold     at least one comes out on the other side, after Holm's correction
    inconclusive      neither: more images or seeds are needed; always, with fewer than 3 seeds per
                      defense (seed-to-seed variation is then not measured; `seeds_note` says so)
    not comparable    the models were not evaluated alike (spec, ε grid, n, evaluation seed, protocol,
                      ||J|| units); the evidence names what differs
    not measured      the study lacks a defense or an attack the claim needs (the row says which)

A claim is about defenses, not models: each defense is a seeds x images matrix, and intervals come
from a two-level bootstrap over seeds and images (`robench.results.seeds`). Measures:
- robustness of a defense under an attack: the image's accuracy averaged over the attack's ε > 0 grid
  (the mean height of the curve, i.e. its AUC per unit ε); "A beats B" is the difference of the two
  defenses' means. "A is the most robust of S" holds when A beats every other member (its closest
  competitor is shown). Claim 5 compares base+jr+adv with base, base+adv and base+jr only (the
  paper's Figure 3b-c); other defenses of a study (PGD-AT, TRADES, ...) get rows of their own.
- ||J||_F: the ratio of the mean test norms, in the units both defenses have (the paper's normalized
  units first), interval on the log scale.
- clean accuracy: per image, from the store's ε = 0 outcomes (at ε = 0 every attack's outcome is
  clean correctness; of a model's ε = 0 rows the one on the most images counts: all 10,000 in the
  paper's protocol, the first --n otherwise); only a model without them is recomputed from its
  weights, on the full test set it was trained against. "About 99%" reads as at least 98.5%, "no
  loss" as a difference of at least -0.5 points.

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
                  "n", "seeds", "verdict", "evidence", "method", "seeds_note"]  # fmt: skip
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
    method: str = ""
    seeds_note: str = ""


class Evidence:
    """The study's numbers, per defense name: model hashes per seed, per-image outcomes, clean predictions.

    A study with a bundle.json (merged from slices) names its models there, and runs it lacks are
    left out (a defense without any is missing from the study); otherwise the weights are hashed.
    """

    def __init__(self, config, out: Path, csv: Path):
        from .bundle import run_hashes
        from .results import outcomes, read_results
        from .results.compare import unique_outcomes
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
        self.table = unique_outcomes(outcomes(csv))
        self._clean: dict[str, np.ndarray] = {}
        self._test_set = None
        self.clean_sources: set[str] = set()  # where clean correctness came from, for the claims' measure

    def has(self, *defenses: str) -> list[str]:
        """The defenses of these the study lacks."""
        return [d for d in defenses if d not in self.hashes]

    def scores(self, defense: str, attack: str, norm: str) -> tuple[np.ndarray, dict[str, dict], list[float]] | None:
        """Per seed and image (seeds x images): accuracy averaged over the attack's ε > 0; each seed's
        evaluation (for `results.compare.mismatch`, by run name); and the ε > 0 used. None when a
        seed lacks the rows or their outcomes."""
        from .results.compare import evaluation

        rows = self.rows[(self.rows["attack"] == attack) & (self.rows["norm"] == norm)]
        per_seed, evaluations, eps = [], {}, []
        for run, model_hash in zip(self.runs[defense], self.hashes[defense]):
            mine = rows[(rows["model_hash"] == model_hash) & (rows["epsilon"] > 0)]
            if mine.empty:
                return None
            evaluations[run] = evaluation(self.rows, model_hash, attack, norm)
            sub = self.table[(self.table["model_hash"] == model_hash) & (self.table["attack"] == attack)
                             & (self.table["norm"] == norm) & self.table["n"].isin(mine["n"])
                             & self.table["seed"].isin(mine["seed"]) & self.table["protocol"].isin(mine["protocol"])
                             & self.table["spec_hash"].isin(mine["spec_hash"])]  # fmt: skip
            sub = sub[sub["epsilon"].round(9).isin(mine["epsilon"].round(9))]
            matrix = sub.pivot_table(index="example", columns="epsilon", values="robust", aggfunc="last")
            if matrix.empty or matrix.isna().any().any() or len(matrix.columns) != len(mine):
                return None
            per_seed.append(matrix.to_numpy(float).mean(axis=1))
            eps = sorted(float(e) for e in matrix.columns)
        if len({len(v) for v in per_seed}) != 1:
            return np.empty((0, 0)), evaluations, eps  # n differs: `mismatch` names it
        return np.stack(per_seed), evaluations, eps

    def jacobian(self, defense: str, units: str) -> np.ndarray | None:
        """Per seed and image: the exact test ||J||_F in `units` ("normalized", the paper's, or
        "pixel"); None unless every seed has it on the same n."""
        attack = {"normalized": "jacobian_norm_normalized", "pixel": "jacobian_norm"}[units]
        per_seed = []
        for model_hash in self.hashes[defense]:
            sub = self.table[(self.table["model_hash"] == model_hash) & (self.table["attack"] == attack)]
            if sub.empty:
                return None
            sub = sub[sub["n"] == sub["n"].max()].drop_duplicates("example").sort_values("example")
            per_seed.append(sub["value"].to_numpy(float))
        if len({len(v) for v in per_seed}) != 1:
            return None
        return np.stack(per_seed)

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


def _robustness_claims(evidence: Evidence) -> list[Claim]:
    """Claims 3-5 under the paper's attacks, then (beyond the paper) under the worst case; then
    base+jr+adv against each defense of the study that the paper does not have, on rows of its own."""
    from .claims_stats import PAPER_FIGURE_3
    from .reproduce import PAPER_DEFENSES

    adversarial = [("fgsm", "linf", "FGSM"), ("pgd", "linf", "PGD")]
    specs = [
        ("3", "JR is the most robust single defense", "paper, Figure 3a", "jr",
         [d for d in SINGLE if d != "jr"], [("noise", "l2", "white noise")]),
        ("4", "base+jr beats base+adv (FGSM adversarial training)", "paper, Figure 3b-c", "base+jr",
         ["base+adv"], adversarial),
        ("5", "base+jr+adv is the most robust (against base, base+adv, base+jr)", "paper, Figure 3b-c",
         "base+jr+adv", list(PAPER_FIGURE_3), adversarial),
    ]  # fmt: skip
    extra = [d for d in evidence.config.defenses if d not in PAPER_DEFENSES] if not evidence.has("base+jr+adv") else []
    for other in extra:
        specs.append((f"5-{other}", f"base+jr+adv beats {other}", "beyond the paper", "base+jr+adv", [other],
                      adversarial))  # fmt: skip
    claims = []
    for claim_id, text, source, a, others, attacks in specs:
        worst = [("worst_case", "linf", "worst case over L∞ attacks")]
        for suffix, (attack, norm, what) in zip("abcw", attacks + worst):
            beyond = attack == "worst_case"
            row_id = claim_id[0] + ("w" if beyond else suffix) + claim_id[1:]
            claim = Claim(row_id, f"{text}, under {what}", "beyond the paper" if beyond else source,
                          seeds=len(evidence.config.seeds))  # fmt: skip
            claims.append(_beats_claim(claim, evidence, a, others, attack, norm, what))
    return claims


def _beats_claim(claim: Claim, evidence: Evidence, a: str, others: list[str], attack: str, norm: str, what: str) -> Claim:
    from .claims_stats import beats, fill

    missing = evidence.has(a, *others)
    found = {"missing": f"defenses not in the study: {', '.join(missing)}"} if missing else \
        beats(evidence, a, others, attack, norm, what)  # fmt: skip
    if "missing" in found:
        claim.evidence = found["missing"]
    elif "refused" in found:
        claim.verdict, claim.evidence = "not comparable", found["refused"]
    else:
        fill(claim, found["estimate"], found["verdict"], n=found["n"], measure=found["measure"],
             evidence=found["evidence"])  # fmt: skip
    return claim


def _jacobian_claim(evidence: Evidence) -> list[Claim]:
    """Claim 1: JR lowers test ||J||_F by more than 10x, with no loss of clean accuracy."""
    from .claims_stats import fill, holm_verdict, jacobian_pair
    from .results.seeds import defense_difference, defense_ratio

    seeds = len(evidence.config.seeds)
    ratio = Claim("1a", "JR lowers the test ||J||_F by more than 10x (none / jr)", "paper, Table 1", seeds=seeds)
    loss = Claim("1b", "JR costs no clean accuracy (jr - none)", "paper, Table 1", seeds=seeds)
    missing = evidence.has("none", "jr")
    if missing:
        ratio.evidence = loss.evidence = f"defenses not in the study: {', '.join(missing)}"
        return [ratio, loss]
    pair = jacobian_pair(evidence, "none", "jr")
    if pair is None:
        ratio.evidence = "no jacobian_norm rows for none or jr"
    elif isinstance(pair, str):
        ratio.verdict, ratio.evidence = "not comparable", pair
    else:
        none, jr, units = pair
        estimate = defense_ratio(none, jr, threshold=JACOBIAN_FACTOR)
        fill(ratio, estimate, holm_verdict([estimate])[0],
             measure=f"ratio of mean exact test ||J||_F ({units} units)",
             evidence=f"mean ||J||_F none {none.mean():.2f}, jr {jr.mean():.2f} ({units} units, n={none.shape[1]})")  # fmt: skip
    clean_none, clean_jr = evidence.clean("none"), evidence.clean("jr")
    n = min(clean_none.shape[1], clean_jr.shape[1])  # the first n test images: the same images
    estimate = defense_difference(clean_jr[:, :n], clean_none[:, :n], threshold=NO_LOSS)
    where = "; ".join(sorted(evidence.clean_sources))
    fill(loss, estimate, holm_verdict([estimate])[0],
         measure=f"difference in clean test accuracy ({where}), threshold -0.5 points",
         evidence=f"clean accuracy jr {clean_jr[:, :n].mean():.4f}, none {clean_none[:, :n].mean():.4f}")  # fmt: skip
    return [ratio, loss]


def _clean_claim(evidence: Evidence) -> Claim:
    """Claim 2: every defense keeps about 99% clean accuracy (Holm over the defenses; the lowest shown)."""
    from .claims_stats import fill, holm_verdict
    from .results.seeds import defense_level

    claim = Claim("2", "every defense keeps about 99% clean accuracy (at least 98.5%)", "paper, Table 1",
                  seeds=len(evidence.config.seeds), threshold=ABOUT_99)  # fmt: skip
    found = [(d, defense_level(evidence.clean(d), threshold=ABOUT_99))
             for d in evidence.config.defenses if d in evidence.hashes]  # fmt: skip
    if not found:
        claim.evidence = "no defense of the study has a model"
        return claim
    verdict, adjusted = holm_verdict([e for _, e in found])
    fill(claim, min((e for _, e in found), key=lambda e: e.low), verdict,
         measure="clean test accuracy of each defense over its seeds and images; the lowest defense",
         evidence="; ".join(f"{d} {e.estimate:.4f} [{e.low:.4f}, {e.high:.4f}], Holm p {p:.2g}"
                            for (d, e), p in zip(found, adjusted)))  # fmt: skip
    return claim


def _certified_claim(evidence: Evidence) -> Claim:
    """Beyond the paper: the premise that a smaller Jacobian enlarges the decision cells, on proven numbers. JR
    against no defense on certify-crown's certified accuracy (a lower bound: robench.attacks.certify_engine),
    where the study certified its models; "not measured" where it did not."""
    claim = Claim("6", "JR raises the certified robust accuracy (CROWN, L∞)", "beyond the paper",
                  seeds=len(evidence.config.seeds))  # fmt: skip
    return _beats_claim(claim, evidence, "jr", ["none"], "certify-crown", "linf", "certified accuracy (certify-crown)")


def study_claims(config, out: str | Path, csv: str | Path) -> pd.DataFrame:
    """Every claim of the paper (and its worst-case versions) checked on a reproduction's results, and
    claim 6 (certified accuracy) where the study has certification rows."""
    evidence = Evidence(config, Path(out), Path(csv))
    claims = _jacobian_claim(evidence) + [_clean_claim(evidence)] + _robustness_claims(evidence)
    claims.append(_certified_claim(evidence))
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
    lines += ["| # | claim | source | verdict | estimate [95% interval] | n × seeds | evidence | interval |",
              "|---|---|---|---|---|---|---|---|"]
    for row in claims.to_dict("records"):
        percent = str(row["claim_id"])[0] in "3456" or row["claim_id"] == "1b"
        value = _number(row["estimate"], percent)
        if math.isfinite(row["ci_low"]):
            value += f" [{_number(row['ci_low'], percent)}, {_number(row['ci_high'], percent)}]"
        note = row.get("seeds_note") if isinstance(row.get("seeds_note"), str) else ""
        verdict = row["verdict"] + ((" (too few seeds)" if note else " at this n") if row["verdict"] == "inconclusive" else "")
        cells = [row["claim_id"], row["claim"], row["source"], f"**{verdict}**", value,
                 f"{row['n']} × {row['seeds']}", f"{row['measure']}. {row['evidence']}".strip(". "),
                 "; ".join(row[k] for k in ("method", "seeds_note") if isinstance(row.get(k), str) and row[k])]  # fmt: skip
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
