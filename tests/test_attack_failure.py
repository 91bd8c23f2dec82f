"""When an attack fails rather than a model resists: indicators of attack failure from the attack's own
path, EOT on a randomized model, transfer from a surrogate when gradients are missing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robench import evaluate_model
from robench.attacks import foolbox_model, load_specs
from robench.attacks.failure import FLAG_SHARE
from robench.attacks.runners import fixed_eps_outcomes
from robench.attacks.suites import load_suites
from robench.data import to_unit_float

from test_trust import NoisyInput, RoundedInput

N = 100


@pytest.fixture(scope="module")
def batch(mnist_test_small):
    x, y = mnist_test_small
    return to_unit_float(x[:N]), y[:N]


def _pgd(**params):
    spec = load_specs()["pgd"]
    return dataclasses.replace(spec, params={**spec.params, **params})


def _indicators(model, batch, spec, eps=0.1):
    x, y = batch
    return fixed_eps_outcomes(spec, foolbox_model(model, "cpu"), x, y, eps, seed=0)


def _fires(failure: dict) -> set[str]:
    return {name for name, limit in FLAG_SHARE.items() if failure[name] > limit}


@pytest.fixture(scope="module")
def lenet(jr_lenet):
    """A LeNet' with JR as the demo trains it (smaller): the model the indicators' thresholds were set on."""
    from robench.checkpoint import load

    model, _ = load(jr_lenet)
    return model.eval()


def test_the_shipped_pgd_fires_no_indicator(lenet, batch):
    model = lenet
    outcome = _indicators(model, batch, load_specs()["pgd"])
    assert outcome.failure["n"] > 0.9 * N
    assert _fires(outcome.failure) == set(), outcome.failure


def test_two_steps_show_incomplete_optimization(lenet, batch):
    model = lenet
    two = _indicators(model, batch, _pgd(steps=2, rel_stepsize=0.5))
    assert "incomplete" in _fires(two.failure), two.failure
    forty = _indicators(model, batch, load_specs()["pgd"])
    assert two.robust.mean() > forty.robust.mean()  # and it is weaker, as the indicator warned


def test_a_step_far_too_large_shows_silent_success_or_non_convergence(lenet, batch):
    model = lenet
    outcome = _indicators(model, batch, _pgd(rel_stepsize=6.25))  # 100x the shipped step
    assert _fires(outcome.failure) & {"silent_success", "non_converging"}, outcome.failure


def test_silent_successes_are_returned_and_re_checked(lenet, batch):
    """The path's adversarial counts: with it, the huge-step PGD is stronger than its own return."""
    model = lenet
    spec = _pgd(rel_stepsize=6.25)
    outcome = _indicators(model, batch, spec)
    assert outcome.failure["silent_success"] > 0, outcome.failure
    # Without the path (a plain Foolbox call, same per-example starts), those examples count as robust.
    from robench.attacks import _seeded, verify_adversarials

    x, y = batch
    attack = spec.build()
    with _seeded(spec, attack, 0, torch.arange(N), N), torch.enable_grad():
        _, clipped, _ = attack(foolbox_model(model, "cpu"), x, y, epsilons=0.1)
    plain_broken = verify_adversarials(model, x, clipped.detach(), y, 0.1, "linf")
    clean = model(x).argmax(1) == y
    plain_robust = (clean & ~plain_broken).float().mean()
    assert outcome.robust.mean() < plain_robust - 1e-9
    silent = round(outcome.failure["silent_success"] * outcome.failure["n"])  # shares are rounded to 6 digits
    assert round(float(plain_robust - outcome.robust.mean()) * N) == silent


def test_rounded_input_shows_unavailable_gradients(trained_model, batch):
    model, _ = trained_model
    outcome = _indicators(RoundedInput(model), batch, load_specs()["pgd"])
    assert outcome.failure["unavailable_gradients"] == 1.0


def test_indicators_land_on_rows_and_flags(trained_model, tmp_path):
    model, _ = trained_model
    rows = evaluate_model(model, dataset="mnist", attacks="pgd", eps=[0.0, 0.1], n=N, out=tmp_path / "r.csv",
                          device="cpu")  # fmt: skip
    row = rows[(rows["attack"] == "pgd") & (rows["epsilon"] == 0.1)].iloc[0]
    assert '"incomplete"' in row["attack_failure"] and "incomplete_optimization" not in str(row["flags"])


def test_eot_on_a_noisy_model_is_no_weaker_than_one_sample(trained_model, tmp_path):
    """Two evaluations under the same majority re-check (20 passes: the model is randomized), PGD with one
    gradient sample per step and with 20: the EOT one is no higher."""
    model, _ = trained_model
    noisy = NoisyInput(model)
    common = dict(dataset="mnist", attacks="pgd", eps=[0.0, 0.1], n=N, device="cpu")
    one = evaluate_model(noisy, eot=1, out=tmp_path / "one.csv", **common)
    eot = evaluate_model(noisy, eot=20, out=tmp_path / "eot.csv", **common)
    acc = {name: rows[(rows["attack"] == "pgd") & (rows["epsilon"] == 0.1)].iloc[0] for name, rows in
           (("one", one), ("eot", eot))}  # fmt: skip
    assert acc["eot"]["accuracy"] <= acc["one"]["accuracy"] + 1e-12, (acc["eot"]["accuracy"], acc["one"]["accuracy"])
    assert '"votes":20' in acc["one"]["attack_params"] and '"votes":20' in acc["eot"]["attack_params"]
    assert '"eot":20' in acc["eot"]["attack_params"] and '"eot"' not in acc["one"]["attack_params"]
    assert acc["one"]["spec_hash"] != acc["eot"]["spec_hash"]  # the row identity records N


def test_a_deterministic_model_gets_no_eot_by_default(trained_model, tmp_path):
    model, _ = trained_model
    rows = evaluate_model(model, dataset="mnist", attacks="pgd", eps=[0.1], n=20, out=tmp_path / "r.csv", device="cpu")
    params = rows[rows["attack"] == "pgd"].iloc[0]["attack_params"]
    assert '"eot"' not in params and '"votes"' not in params
    assert rows[rows["attack"] == "pgd"].iloc[0]["spec_hash"] == load_specs()["pgd"].spec_hash


def test_autoattack_rand_mirrors_autoattacks_rand_version():
    suite = load_suites()["autoattack-rand"]
    assert [m.name for m in suite.members] == ["apgd-ce", "apgd-dlr"] and suite.eot == 20
    ran = suite.variant(eot=20, votes=20)
    assert all(m.eot == 20 and m.votes == 20 for m in ran.members)
    assert ran.spec_hash != suite.spec_hash


def test_transfer_from_the_unwrapped_model_breaks_the_rounded_one(trained_model, tmp_path):
    """Rounding the input zeroes every gradient; PGD crafted on the unwrapped model and re-checked on the
    rounded one breaks about as many examples as PGD on the unwrapped model itself."""
    model, _ = trained_model
    common = dict(dataset="mnist", attacks="pgd", eps=[0.0, 0.1], n=N, device="cpu")
    plain = evaluate_model(model, out=tmp_path / "plain.csv", **common)
    direct = evaluate_model(RoundedInput(model), name="rounded", out=tmp_path / "direct.csv", **common)
    transfer = evaluate_model(RoundedInput(model), name="rounded", surrogate=model, out=tmp_path / "transfer.csv", **common)

    def acc(rows):
        return float(rows[(rows["attack"] == "pgd") & (rows["epsilon"] == 0.1)].iloc[0]["accuracy"])

    assert acc(transfer) <= acc(plain) + 0.02, (acc(transfer), acc(plain))
    assert acc(transfer) < acc(direct) - 0.1  # the gradients were missing; the surrogate's were not
    row = transfer[(transfer["attack"] == "pgd") & (transfer["epsilon"] == 0.1)].iloc[0]
    assert '"surrogate"' in row["attack_params"]


def test_missing_gradients_say_the_number_rests_on_black_box_attacks(trained_model, tmp_path):
    model, _ = trained_model
    common = dict(dataset="mnist", attacks="pgd,autoattack-fast", eps=[0.0, 0.1], n=50, device="cpu")
    alone = evaluate_model(RoundedInput(model), name="rounded", out=tmp_path / "alone.csv", **common)
    worst = alone[(alone["attack"] == "worst_case") & (alone["epsilon"] == 0.1)].iloc[0]
    assert "blackbox_alone" in worst["flags"]
    transfer = evaluate_model(RoundedInput(model), name="rounded", surrogate=model, out=tmp_path / "t.csv", **common)
    worst = transfer[(transfer["attack"] == "worst_case") & (transfer["epsilon"] == 0.1)].iloc[0]
    assert "blackbox_alone" not in str(worst["flags"])
