"""Attack specs and the Foolbox runners, on a real MNIST model: properties that break when code is wrong."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
import torch.nn.functional as F

from robench import attacks
from robench.attacks import (
    accuracy_from_distances, fixed_eps_accuracy, foolbox_model, frozen_parameters, load_specs,
    minimal_distances, parse_eps, resolve_attacks,
)  # fmt: skip
from robench.data import to_unit_float
from robench.errors import RobenchError
from robench.metrics import clean_accuracy

REPO_SPECS = Path(__file__).resolve().parent.parent / "attacks"
N = 200  # images for the fixed-eps properties; CW uses fewer
TOL = 0.02
MNIST_LINF = [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]
MNIST_L2 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.fixture(scope="module")
def model(trained_model):
    return trained_model[0]


@pytest.fixture(scope="module")
def fmodel(model):
    return foolbox_model(model, "cpu")


@pytest.fixture(scope="module")
def data(mnist_test_small):
    images, labels = mnist_test_small
    return to_unit_float(images[:N]), labels[:N]


@pytest.fixture(scope="module")
def specs():
    return load_specs()


@pytest.fixture(scope="module")
def linf_curves(specs, fmodel, data):
    """Per-example accuracies of FGSM and PGD over the default MNIST grid (computed once)."""
    x, y = data
    return {
        name: {eps: fixed_eps_accuracy(specs[name], fmodel, x, y, eps, seed=0) for eps in MNIST_LINF}
        for name in ("fgsm", "pgd")
    }


@pytest.fixture(scope="module")
def cw_distances(specs, fmodel, data):
    x, y = data
    return minimal_distances(specs["cw"], fmodel, x[:100], y[:100], seed=0)


PAPER = ["cw", "fgsm", "noise", "pgd", "pgd-l2"]
CERTIFIED = ["certify-crown", "certify-ibp", "certify-radius", "verify-milp"]  # lower bounds, not attacks
NEW = ["apgd-ce", "apgd-dlr", "apgd-ce-l2", "apgd-t", "apgd-t-3", "apgd-t-l2", "ddn", "fab-t", "fab-t-3", "square", "square-1k",
       "square-l2", "square-pe", "square-pe-1k", "square-pe-adaptive"]


# --- specs --------------------------------------------------------------------------------------


def test_specs_load_with_derived_kind_and_norm(specs):
    assert list(specs) == sorted(PAPER + NEW + CERTIFIED)
    assert {s.name for s in specs.values() if s.role == "certified"} == {s.name for s in specs.values()
                                                                        if s.kind == "certified"} == set(CERTIFIED)
    assert {s.name: s.kind for s in specs.values() if s.name in PAPER} == {
        "cw": "minimization", "fgsm": "fixed", "noise": "fixed", "pgd": "fixed", "pgd-l2": "fixed",
    }  # fmt: skip
    assert {s.name: s.norm for s in specs.values() if s.name in PAPER} == {
        "cw": "l2", "fgsm": "linf", "noise": "l2", "pgd": "linf", "pgd-l2": "l2",
    }  # fmt: skip
    assert specs["ddn"].kind == "minimization" and specs["apgd-t"].engine == "torchattacks"
    assert {specs[n].norm for n in ("apgd-ce-l2", "apgd-t-l2", "square-l2", "ddn")} == {"l2"}
    assert specs["noise"].repeats == 10 and specs["pgd"].repeats == 1
    assert specs["pgd"].params == {"steps": 40, "random_start": True, "rel_stepsize": 2.5 / 40}
    assert type(specs["pgd"].build()).__name__ == "LinfProjectedGradientDescentAttack"
    assert load_specs(REPO_SPECS) == specs  # the packaged data and the repository's files agree


def test_specs_fall_back_to_the_repository_directory(specs, monkeypatch):
    monkeypatch.setattr(attacks, "SPEC_PACKAGE", "robench.no_such_package")
    assert load_specs() == specs


def test_default_grids_follow_the_paper(specs):
    assert specs["pgd"].default_eps("mnist") == MNIST_LINF == specs["fgsm"].default_eps("mnist")
    assert specs["pgd-l2"].default_eps("mnist") == MNIST_L2 == specs["cw"].default_eps("mnist")
    assert specs["noise"].default_eps("mnist") == [0, 2, 4, 6, 8, 10, 12, 16, 20]
    assert specs["pgd"].default_eps("cifar10") == pytest.approx([k / 255 for k in (0, 1, 2, 4, 8, 16)])
    assert specs["cw"].default_eps("cifar10") == [0, 0.25, 0.5, 1, 2]
    assert specs["noise"].default_eps("cifar10") == [0, 1, 2, 4, 8, 16]
    with pytest.raises(RobenchError, match="no default eps grid for dataset 'svhn'"):
        specs["pgd"].default_eps("svhn")


def test_spec_hash_covers_parameters_only(specs):
    pgd = specs["pgd"]
    assert pgd.params_json == (
        '{"class":"LinfPGD","params":{"random_start":true,"rel_stepsize":0.0625,"steps":40},'
        '"path":"adversarial-on-path","repeats":1}'  # traced: it returns an adversarial its path met
    )
    assert "path" not in specs["fgsm"].params_json  # one step: nothing to trace
    assert len(pgd.spec_hash) == 12 and int(pgd.spec_hash, 16) >= 0
    assert dataclasses.replace(pgd, description="other words", eps={}).spec_hash == pgd.spec_hash
    assert dataclasses.replace(pgd, params={**pgd.params, "steps": 100}).spec_hash != pgd.spec_hash
    assert len({s.spec_hash for s in specs.values()}) == len(specs)


GOOD = """name = "x"
description = "PGD"
foolbox_class = "LinfPGD"
norm = "linf"
[params]
steps = 10
[eps]
mnist = [0, 0.1]
"""


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("steps = 10", "stepz = 10", "takes no parameter 'stepz'"),
        ('"LinfPGD"', '"LinfPGDX"', "unknown Foolbox attack class 'LinfPGDX'"),
        ('norm = "linf"', 'norm = "l2"', "does not match LinfPGD's distance"),
        ('norm = "linf"', 'norm = "l1"', "norm must be one of"),
        ("[0, 0.1]", "[0, -0.1]", "negative"),
        ('description = "PGD"\n', "", "missing key"),
        ('name = "x"', 'name = "y"', "must match the file name"),
        ("[params]", "repeat = 3\n[params]", "unknown key"),
        ("steps = 10", 'steps = "ten"', "parameter 'steps' must be an integer"),
        ("steps = 10", "steps = 10\nrandom_start = 1", "parameter 'random_start' must be true or false"),
        ('"LinfPGD"', '"L2AdditiveGaussianNoiseAttack"\nrepeats = 0', "repeats must be a positive"),
        ("[eps]", "[eps", "not valid TOML"),
        ("[params]", 'access = "grey-box"\n[params]', "access must be one of white-box, black-box"),
        ("[params]", "loss = 3\n[params]", "loss must be a string"),
    ],
)
def test_bad_spec_is_refused_naming_file_and_problem(tmp_path, old, new, message):
    (tmp_path / "x.toml").write_text(GOOD)
    assert load_specs(tmp_path)["x"].kind == "fixed"
    assert old in GOOD
    (tmp_path / "x.toml").write_text(GOOD.replace(old, new))
    with pytest.raises(RobenchError, match=message) as info:
        load_specs(tmp_path)
    assert "x.toml" in str(info.value) and "\n" not in str(info.value)


def test_a_minimization_spec_cannot_repeat(tmp_path):
    (tmp_path / "x.toml").write_text(
        GOOD.replace('"LinfPGD"', '"L2CarliniWagnerAttack"\nrepeats = 3').replace("linf", "l2")
    )
    with pytest.raises(RobenchError, match="repeats applies to fixed-eps attacks only"):
        load_specs(tmp_path)


def test_resolve_attacks():
    assert [s.name for s in resolve_attacks("all")] == sorted(PAPER + NEW)
    assert [s.name for s in resolve_attacks(" pgd, fgsm ,pgd")] == ["pgd", "fgsm"]
    assert [s.name for s in resolve_attacks("pgd,all")] == sorted(PAPER + NEW)
    with pytest.raises(RobenchError, match=r"unknown attack 'pdg'; choose from apgd-ce, .*cw, ddn, fab-t, fab-t-3, fgsm, noise, pgd, pgd-l2"):
        resolve_attacks("pgd,pdg")
    with pytest.raises(RobenchError, match="no attack given"):
        resolve_attacks(" , ")


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_parse_eps_reads_back_what_it_is_given(values):
    text = ",".join(f"{v}/255" if v % 2 else f"{v / 1000!r}" for v in values)
    expected = sorted({v / 255 if v % 2 else v / 1000 for v in values})
    assert parse_eps(text) == expected


def test_parse_eps():
    assert parse_eps("0,0.1") == [0.0, 0.1]
    assert parse_eps("8/255") == [8 / 255]
    assert parse_eps(" 0.3, 0, 0.1,0.3 ,") == [0.0, 0.1, 0.3]
    for bad, message in [("-0.1", ">= 0"), ("abc", "cannot read"), ("", "empty"), ("1/0", "cannot read"),
                         ("inf", "finite"), ("nan", "finite")]:  # fmt: skip
        with pytest.raises(RobenchError, match=message):
            parse_eps(bad)


def test_importing_attacks_and_checks_loads_no_foolbox():
    code = "import sys, robench.attacks, robench.checks; print('foolbox' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- fixed-eps attacks --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd-l2", "noise"])
def test_eps_zero_is_exactly_clean_accuracy(name, specs, model, fmodel, data, mnist_test_small):
    x, y = data
    acc = fixed_eps_accuracy(specs[name], fmodel, x, y, 0.0, seed=0)
    with torch.no_grad():
        direct = (model(x).argmax(1) == y).float()
    assert acc.dtype == torch.float32 and acc.device.type == "cpu"
    assert torch.equal(acc, direct)
    assert acc.sum().item() == round(N * clean_accuracy(model, mnist_test_small[0][:N], mnist_test_small[1][:N]))


def test_fgsm_and_pgd_never_rise_with_eps(linf_curves):
    for name, curve in linf_curves.items():
        means = [curve[eps].mean().item() for eps in MNIST_LINF]
        for smaller, larger in zip(means, means[1:]):
            assert larger <= smaller + TOL, (name, means)
        assert means[-1] <= means[0] - 0.5, (name, means)  # the attack does something


def test_pgd_is_no_weaker_than_fgsm(linf_curves):
    for eps in MNIST_LINF:
        assert linf_curves["pgd"][eps].mean() <= linf_curves["fgsm"][eps].mean() + TOL, eps


def test_misclassified_examples_count_as_broken(linf_curves, specs, fmodel, data):
    clean = linf_curves["pgd"][0]
    for curve in linf_curves.values():
        for acc in curve.values():
            assert (acc <= clean).all()  # robust implies clean-correct, example by example
    # Noise sometimes repairs a misclassified digit (Foolbox then reports no success); still broken.
    noisy = fixed_eps_accuracy(specs["noise"], fmodel, *data, 4.0, seed=0)
    assert (noisy <= clean).all()


def test_pgd_at_eps_one_breaks_everything(specs, fmodel, data):
    # At L∞ eps = 1 every image in [0, 1] can reach every other one.
    assert fixed_eps_accuracy(specs["pgd"], fmodel, *data, 1.0, seed=0).sum().item() == 0


def test_results_are_reproducible_from_the_seed(specs, fmodel, data):
    x, y = data
    for name, eps in [("pgd", 0.1), ("noise", 12.0)]:
        a = fixed_eps_accuracy(specs[name], fmodel, x, y, eps, seed=3)
        b = fixed_eps_accuracy(specs[name], fmodel, x, y, eps, seed=3)
        assert torch.equal(a, b)


def test_noise_averages_its_repeats(specs, fmodel, data):
    x, y = data
    acc = fixed_eps_accuracy(specs["noise"], fmodel, x, y, 16.0, seed=0)
    assert torch.equal(acc * 10, (acc * 10).round())  # each example: k of 10 draws survived
    assert ((acc > 0) & (acc < 1)).any()  # some examples survive only some draws
    assert acc.mean() < fixed_eps_accuracy(specs["noise"], fmodel, x, y, 0.0, seed=0).mean()


@pytest.mark.parametrize("name, eps", [("fgsm", 0.1), ("pgd", 0.1), ("pgd-l2", 1.5), ("noise", 6.0)])
def test_perturbations_stay_within_eps_and_bounds(name, eps, specs, fmodel, data):
    """The raw images the attacks produce (before Foolbox clips them to eps) are already in the ball."""
    x, y = data
    spec = specs[name]
    torch.manual_seed(0)
    raw, clipped, _ = spec.build()(fmodel, x, y, epsilons=eps)
    for images in (raw, clipped):
        delta = (images - x).flatten(1)
        norms = delta.abs().amax(1) if spec.norm == "linf" else delta.norm(dim=1)
        assert norms.max().item() <= eps * (1 + 1e-5)
        assert images.min() >= 0 and images.max() <= 1
    if name == "noise":  # clipping-aware: the noise that survives clipping has exactly norm eps
        norms = (clipped - x).flatten(1).norm(dim=1)
        assert norms.min().item() >= eps * (1 - 1e-3)


def test_attacks_leave_no_parameter_gradients(specs, model, fmodel, data):
    x, y = data
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a mixed state must come back as it was
    try:
        fixed_eps_accuracy(specs["pgd"], fmodel, x[:50], y[:50], 0.1, seed=0)
        minimal_distances(specs["cw"], fmodel, x[:10], y[:10], seed=0)
        assert all(p.grad is None for p in params)
        assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    finally:
        params[0].requires_grad_(True)


def test_frozen_parameters_restores_flags_after_an_error(model):
    with pytest.raises(ZeroDivisionError):
        with frozen_parameters(model):
            assert not any(p.requires_grad for p in model.parameters())
            1 / 0
    assert all(p.requires_grad for p in model.parameters())


def test_the_wrapped_module_is_found(model, fmodel):
    assert attacks._torch_module(fmodel) is model
    with pytest.raises(RobenchError, match="cannot find the torch module"):
        attacks._torch_module(object())


def test_kinds_are_not_mixed_up(specs, fmodel, data):
    x, y = data
    with pytest.raises(RobenchError, match="not a fixed-eps one"):
        fixed_eps_accuracy(specs["cw"], fmodel, x, y, 1.0, seed=0)
    with pytest.raises(RobenchError, match="not a minimization one"):
        minimal_distances(specs["pgd"], fmodel, x, y, seed=0)
    with pytest.raises(RobenchError, match=">= 0"):
        fixed_eps_accuracy(specs["pgd"], fmodel, x, y, -0.1, seed=0)
    with pytest.raises(RobenchError, match=r"in \[0, 1\]"):
        fixed_eps_accuracy(specs["pgd"], fmodel, x * 255, y, 0.1, seed=0)
    with pytest.raises(RobenchError, match="labels"):
        minimal_distances(specs["cw"], fmodel, x, y[:10], seed=0)


def own_pgd_accuracy(model, x, y, eps: float, *, steps: int = 40, seed: int = 0) -> float:
    """An independent L∞ PGD in plain torch: random start, signed steps of 2.5 * eps / steps.

    Projection is done on the perturbation (`d = (x + d).clamp(0, 1) - x`) and the model sees
    `x + d` unclamped, so pixels at 0 or 1 keep their gradient (see STYLE.md's trap).
    """
    gen = torch.Generator().manual_seed(seed)
    d = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    d = (x + d).clamp(0, 1) - x
    for _ in range(steps):
        d.requires_grad_(True)
        loss = F.cross_entropy(model(x + d), y)
        (grad,) = torch.autograd.grad(loss, d)
        d = (d.detach() + 2.5 * eps / steps * grad.sign()).clamp(-eps, eps)
        d = (x + d).clamp(0, 1) - x
    with torch.no_grad():
        return (model(x + d).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_foolbox_pgd_is_at_least_as_strong_as_an_independent_pgd(eps, specs, model, fmodel, data):
    x, y = data
    with frozen_parameters(model):
        own = own_pgd_accuracy(model, x, y, eps)
    ours = fixed_eps_accuracy(specs["pgd"], fmodel, x, y, eps, seed=0).mean().item()
    clean = fixed_eps_accuracy(specs["pgd"], fmodel, x, y, 0.0, seed=0).mean().item()
    assert own < clean - 0.2  # the reference attack itself works
    assert ours <= own + TOL


# --- minimization attack (CW) -------------------------------------------------------------------


def test_cw_distances_give_monotone_accuracies(cw_distances, fmodel, data):
    x, y = data
    d = cw_distances
    assert d.dtype == torch.float64 and d.shape == (100,)
    accs = [accuracy_from_distances(d, eps) for eps in MNIST_L2 + [1e9]]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    with torch.no_grad():
        clean = (fmodel(x[:100]).argmax(1) == y[:100]).double()
    assert accs[0] == clean.mean().item()
    assert d.median().item() > 0


def test_cw_zero_exactly_where_clean_is_wrong_and_finite_elsewhere(cw_distances, fmodel, data):
    x, y = data
    with torch.no_grad():
        wrong = fmodel(x[:100]).argmax(1) != y[:100]
    assert wrong.any()
    assert torch.equal(cw_distances == 0, wrong)
    assert torch.isfinite(cw_distances).all()  # the preset finds an adversarial for every image here


def test_cw_is_no_weaker_than_pgd_l2(cw_distances, specs, fmodel, data):
    x, y = data
    for eps in (1.0, 1.5):
        pgd = fixed_eps_accuracy(specs["pgd-l2"], fmodel, x[:100], y[:100], eps, seed=0).mean().item()
        assert accuracy_from_distances(cw_distances, eps) <= pgd + 0.05, eps


def test_cw_failures_are_infinite_not_blank_images(specs, model, fmodel, data):
    """With one step CW finds nothing and returns all-zero images, which the model may misclassify."""
    x, y = data[0][:100], data[1][:100]
    hopeless = dataclasses.replace(specs["cw"], params={"steps": 1, "binary_search_steps": 1})
    with torch.no_grad():
        blank_class = model(torch.zeros_like(x[:1])).argmax(1).item()
        correct = model(x).argmax(1) == y
    trap = correct & (y != blank_class)
    assert trap.any()  # examples where counting the blank image would claim a (fake) adversarial
    torch.manual_seed(0)
    with frozen_parameters(model):
        advs, _, success = hopeless.build()(fmodel, x, y, epsilons=None)
    assert (advs[trap] == 0).all() and success[trap].all()  # Foolbox's own flag is fooled
    d = minimal_distances(hopeless, fmodel, x, y, seed=0)
    assert torch.isinf(d[correct]).all()
    assert (d[~correct] == 0).all()
    assert accuracy_from_distances(d, 1e9) == correct.double().mean().item()


def test_empty_batches(specs, fmodel, data):
    x, y = data
    assert fixed_eps_accuracy(specs["pgd"], fmodel, x[:0], y[:0], 0.1, seed=0).shape == (0,)
    assert minimal_distances(specs["cw"], fmodel, x[:0], y[:0], seed=0).shape == (0,)


def test_accuracy_from_distances():
    d = torch.tensor([0.0, 0.5, 1.0, math.inf], dtype=torch.float64)
    assert [accuracy_from_distances(d, e) for e in (0, 0.5, 0.99, 1.0, 100)] == [0.75, 0.5, 0.5, 0.25, 0.25]
    assert math.isnan(accuracy_from_distances(torch.zeros(0), 0.1))
