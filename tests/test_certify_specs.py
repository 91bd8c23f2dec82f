"""Certification as attack specs (certify-ibp, certify-crown, verify-milp): rows of lower bounds that keep each
example's verdict, never join the worst case, sit under it example by example, and flag a contradiction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robench.attacks import load_specs
from robench.attacks.certify_engine import certified_outcomes
from robench.attacks.suites import resolve
from robench.data import to_unit_float
from robench.evaluate import EvalConfig, evaluate
from robench.models import GeneratorDropout, Normalize
from robench.results import ResultsStore, outcomes, read_results
from robench.sources import ModelSource

from small_models import train_adam

EPS = (0.0, 0.01, 0.02, 0.04)
CERTIFIERS = ("certify-ibp", "certify-crown", "verify-milp")


@pytest.fixture(scope="module")
def small_mlp(mnist_train_small):
    """784-16-16-10 ReLU MLP with its own normalization, 2 epochs of Adam on 3,000 images (as test_certify)."""
    x, y = to_unit_float(mnist_train_small[0]), mnist_train_small[1]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(Normalize((0.1307,), (0.3081,)), nn.Flatten(), nn.Linear(784, 16), nn.ReLU(),
                              nn.Linear(16, 16), nn.ReLU(), GeneratorDropout(0.0), nn.Linear(16, 10))  # fmt: skip
        return train_adam(model, x, y, epochs=2)


@pytest.fixture(scope="module")
def evaluated(small_mlp, tmp_path_factory):
    out = tmp_path_factory.mktemp("certify") / "r.csv"
    source = ModelSource(name="small-mlp", model=small_mlp, dataset="mnist", defense="none", model_hash="smallmlp0001",
                         meta={})  # fmt: skip
    evaluate([source], EvalConfig(attacks=",".join(CERTIFIERS) + ",pgd,autoattack-fast,certify-radius,cw", eps=EPS,
                                  n=30, device="cpu", jacobian_n=0), out=out, show_progress=False)  # fmt: skip
    return out


def _vec(per_example, attack: str, eps: float, column: str = "robust") -> np.ndarray:
    rows = per_example[(per_example["attack"] == attack) & np.isclose(per_example["epsilon"], eps)]
    return rows.sort_values("example")[column].to_numpy()


def test_certified_under_the_worst_case_example_by_example(evaluated):
    per_example, rows = outcomes(evaluated), read_results(evaluated).set_index(["attack", "epsilon"])
    for eps in EPS[1:]:
        worst = _vec(per_example, "worst_case", eps) >= 1
        ibp, crown, milp = (_vec(per_example, name, eps) >= 1 for name in CERTIFIERS)
        assert not (ibp & ~crown).any() and not (crown & ~milp).any(), eps  # IBP ⊂ CROWN ⊂ MILP-certified
        assert not (milp & ~worst).any(), eps  # nothing proved robust is broken by an attack
        codes = _vec(per_example, "verify-milp", eps, "value")
        assert set(np.unique(codes)) <= {-1.0, 0.0, 1.0}
        assert np.array_equal(codes == 1, milp)  # robust 1 exactly where certified; the verdict beside it
        assert rows.loc[("verify-milp", eps), "value"] == pytest.approx((codes == 0).mean())  # unknown share
    # the comparison has teeth: CROWN proves a clear share at 0.01 and more than IBP somewhere
    assert rows.loc[("certify-crown", 0.01), "accuracy"] >= 0.5
    assert any(rows.loc[("certify-crown", e), "accuracy"] > rows.loc[("certify-ibp", e), "accuracy"] for e in EPS[1:])
    # the MILP decides at least 90% within its time limit at 0.02
    assert (_vec(per_example, "verify-milp", 0.02, "value") != 0).mean() >= 0.9


def test_certifications_never_join_the_worst_case_nor_all(evaluated):
    rows = read_results(evaluated)
    for params in rows.loc[rows["attack"] == "worst_case", "attack_params"]:
        joined = json.loads(params)["attacks"]
        assert not set(joined) & set(CERTIFIERS) and "pgd" in joined
        assert "certified_but_broken" not in json.loads(params)
    assert not {item.name for item in resolve("all")} & set(CERTIFIERS)
    assert {item.name for item in resolve("all,certify-crown")} >= {"certify-crown", "pgd"}
    assert not any("certified_but_broken" in str(f) for f in rows["flags"])


def test_a_certified_example_an_attack_breaks_is_flagged(tmp_path):
    """A contradiction (robench's own bug, faked here by a row claiming a proof) flags the certification's row
    and the worst case at that ε, whatever the tolerance."""
    base = {"model": "m", "dataset": "mnist", "defense": "none", "n": 4, "seed": 0, "robench_version": "t",
            "model_hash": "h", "protocol": 3, "norm": "linf", "epsilon": 0.1, "timestamp": "t"}  # fmt: skip
    rows = [
        {**base, "attack": "pgd", "spec_hash": "p", "accuracy": 0.5, "_robust": np.array([1.0, 1.0, 0.0, 0.0])},
        {**base, "attack": "fgsm", "spec_hash": "f", "accuracy": 0.75, "_robust": np.array([1.0, 1.0, 1.0, 0.0])},
        {**base, "attack": "certify-crown", "spec_hash": "c", "accuracy": 0.5, "value": 0.0,
         "_robust": np.array([1.0, 0.0, 1.0, 0.0]), "_value": np.array([1.0, 0.0, 1.0, 0.0])},
    ]  # fmt: skip
    with ResultsStore(tmp_path / "r.csv") as store:
        store.add(rows)
        table = store.table()
    flagged = table[table["flags"].str.contains("certified_but_broken")]
    assert set(flagged["attack"]) == {"certify-crown", "worst_case"}
    worst = table[table["attack"] == "worst_case"]
    assert json.loads(worst["attack_params"].iloc[0])["certified_but_broken"] == {"certify-crown": 1}


def test_unknown_is_counted_not_certified(small_mlp, mnist_test_small):
    """Out of time is unknown: robust 0 (the row's accuracy counts it as not certified), verdict 0."""
    from dataclasses import replace

    spec = load_specs(only={"verify-milp"})["verify-milp"]
    hurried = replace(spec, params={**spec.params, "time_limit": 1e-6, "bounds": "ibp"})
    x, y = to_unit_float(mnist_test_small[0][:10]), mnist_test_small[1][:10]
    robust, codes = certified_outcomes(hurried, small_mlp, x, y, 0.04)
    assert (codes == 0).sum() >= 1 and torch.equal(robust, (codes == 1).float())
    assert len(codes) == 10  # every example has a verdict: none dropped


def test_spec_errors_are_one_line(tmp_path):
    from robench.errors import RobenchError

    (tmp_path / "bad.toml").write_text('name = "bad"\ndescription = "x"\nengine = "robench"\nclass = "VerifyMILP"\n'
                                       'norm = "l2"\nrole = "certified"\n[params]\n[eps]\nmnist = [0, 0.1]\n')  # fmt: skip
    with pytest.raises(RobenchError, match="VerifyMILP certifies norm linf, not 'l2'"):
        load_specs(tmp_path)
    (tmp_path / "bad.toml").write_text('name = "bad"\ndescription = "x"\nengine = "robench"\nclass = "Certify"\n'
                                       'norm = "linf"\n[params]\n[eps]\nmnist = [0, 0.1]\n')  # fmt: skip
    with pytest.raises(RobenchError, match="role 'certified' goes with a certification class"):
        load_specs(tmp_path)


def test_the_report_draws_the_band(evaluated, tmp_path):
    """certified.png and the section's table: certified (best certification) <= worst case at every ε."""
    from robench.report import write_report

    written = write_report([evaluated], tmp_path / "report")
    names = {f.name for f in written.files}
    assert "certified.png" in names and (tmp_path / "report" / "certified.png").stat().st_size > 10_000
    text = (tmp_path / "report" / "report.md").read_text()
    section = text.split("## Certified beside attacked", 1)[1].split("\n## ", 1)[0]
    table = [line.split(" | ") for line in section.split("### Radius bracket")[0].splitlines()
             if line.startswith("| `small-mlp`")]  # fmt: skip
    assert [cells[2] for cells in table] == ["linf"] * len(EPS)  # one row per ε with a worst case (L2: CW alone)
    for cells in table:
        certified, worst = float(cells[4]), float(cells[7])
        assert certified <= worst + 1e-12 and cells[5] in CERTIFIERS


def test_the_certified_radius_brackets_the_distance_from_below(evaluated, tmp_path):
    """certify-radius (L2) <= CW's minimal adversarial distance on every example; robust at ε exactly where
    radius >= ε; the report's bracket table shows both medians."""
    from robench.report import write_report

    per_example = outcomes(evaluated)
    radius = _vec(per_example, "certify-radius", 0.0, "distance")
    cw = _vec(per_example, "cw", 0.0, "distance")
    correct = _vec(per_example, "certify-radius", 0.0) >= 1
    assert (radius[correct] > 0).mean() >= 0.8 and (radius[~correct] == 0).all()  # it proves something
    assert (radius <= cw + 1e-9).all()  # a proof never exceeds a found adversarial's distance
    for eps in EPS[1:]:
        assert np.array_equal(_vec(per_example, "certify-radius", eps) >= 1, correct & (radius >= eps))
    write_report([evaluated], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### Radius bracket" in text and "| `small-mlp` | none | l2 |" in text
