"""AutoAttack-grade evaluation: the torchattacks engine, the re-check of every adversarial, the
cascade, and the worst case against an independent targeted attack on a JR-trained LeNet'."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robench.attacks import foolbox_model, load_specs, verify_adversarials
from robench.attacks.suites import load_suites, resolve
from robench.cli import cli
from robench.data import load_dataset, to_unit_float
from robench.evaluate import EvalConfig, evaluate
from robench.results import outcomes, read_results
from robench.sources import from_run

N = 60


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def targeted_margin_attack(model, x, y, eps: float, steps: int = 50) -> torch.Tensor:
    """An independent L-inf attack in plain torch: for every wrong class t, signed-gradient ascent on
    the margin z_t - max_{j != t} z_j from the clean image, projected onto the ε ball and the box by
    d = (x + d).clamp(0, 1) - x (the model always sees x + d, never a clamp). Returns robust (bool)."""
    robust = model(x).argmax(1) == y
    num_classes = model(x[:1]).shape[1]
    for target in range(num_classes):
        todo = robust & (y != target)
        if not todo.any():
            continue
        xs, ys = x[todo], y[todo]
        d = torch.zeros_like(xs)
        t = torch.full_like(ys, target)
        for _ in range(steps):
            d.requires_grad_(True)
            z = model(xs + d)
            other = z.masked_fill(torch.nn.functional.one_hot(t, num_classes).bool(), -math.inf).amax(1)
            (grad,) = torch.autograd.grad((z.gather(1, t[:, None]).squeeze(1) - other).sum(), d)
            d = (d.detach() + eps / 8 * grad.sign()).clamp(-eps, eps)
            d = (xs + d).clamp(0, 1) - xs
        with torch.no_grad():
            fooled = model(xs + d).argmax(1) != ys
        idx = todo.nonzero().flatten()
        robust[idx[fooled]] = False
    return robust


@pytest.mark.parametrize("suite", ["autoattack-fast", "autoattack-adaptive", pytest.param("autoattack", marks=pytest.mark.slow)])
def test_autoattack_is_at_least_as_strong_as_pgd_and_an_independent_targeted_attack(tmp_path, jr_lenet, suite):
    """The standard suite (with FAB-T and Square 5000: minutes on 2 CPU cores) in the slow tier, the CPU
    budget one (APGD-CE, APGD-T, Square 1000) and the adaptive one (3 targets, Square's adaptive budget)
    in the default suite."""
    out = tmp_path / "aa.csv"
    source = from_run(jr_lenet)
    evaluate([source], EvalConfig(attacks=f"pgd,{suite}", eps=(0.0, 0.1, 0.2), n=N, device="cpu"), out=out,
             show_progress=False)  # fmt: skip
    rows = read_results(out).set_index(["attack", "epsilon"])["accuracy"].rename(index={suite: "autoattack"}, level=0)
    model = source.model.eval()
    x, y = load_dataset("mnist", "test", subset=N)
    x = to_unit_float(x)
    for p in model.parameters():
        p.requires_grad_(False)
    for eps in (0.1, 0.2):
        independent = targeted_margin_attack(model, x, y, eps).double().mean().item()
        assert rows["autoattack", eps] <= rows["pgd", eps] + 1e-12
        assert rows["autoattack", eps] <= independent + 0.02, (eps, rows["autoattack", eps], independent)
        assert rows["worst_case", eps] <= min(rows["autoattack", eps], rows["pgd", eps]) + 1e-12
    assert rows["autoattack", 0.1] < rows["autoattack", 0.0]  # it did bite


def test_the_cascade_equals_every_member_on_every_example(tmp_path, trained_run, monkeypatch):
    """And Square (`square-pe`, robench's engine) is handed the survivors of the members before it, and
    nothing else: the indices of every call it gets, per ε."""
    from robench.attacks import robench_engine

    cascade, alone = tmp_path / "cascade.csv", tmp_path / "alone.csv"
    common = ["--n", "100", "--eps", "0,0.05,0.1", "--device", "cpu", "--quiet", "--batch-size", "30"]
    handed: dict[float, list[int]] = {}
    square = robench_engine.adversarials

    def recorded(spec, model, images, labels, eps, *, seed, indices):
        handed.setdefault(eps, []).extend(indices.tolist())
        return square(spec, model, images, labels, eps, seed=seed, indices=indices)

    monkeypatch.setattr(robench_engine, "adversarials", recorded)
    assert invoke("eval", trained_run, "--attack", "autoattack", *common, "--out", cascade).exit_code == 0
    monkeypatch.setattr(robench_engine, "adversarials", square)
    assert invoke("eval", trained_run, "--attack", "apgd-ce,apgd-t,fab-t,square-pe", *common, "--out", alone).exit_code == 0
    c, a = outcomes(cascade), outcomes(alone)
    broken_below = np.zeros(100, dtype=bool)  # the cascade's rule: broken at ε stays broken above it
    for eps in (0.0, 0.05, 0.1):
        vec = lambda df, attack: df[(df["attack"] == attack) & np.isclose(df["epsilon"], eps)].sort_values(  # noqa: E731
            "example")["robust"].to_numpy()
        survived = ~broken_below
        for member in ("apgd-ce", "apgd-t", "fab-t", "square-pe"):
            survived &= vec(a, member) >= 1
            np.testing.assert_array_equal(vec(c, f"autoattack.{member}") >= 1, survived)
        np.testing.assert_array_equal(vec(c, "autoattack") >= 1, survived)
        if eps > 0:  # Square got the survivors of FAB-T at ε, each once
            before = np.flatnonzero(vec(c, "autoattack.fab-t") >= 1)
            assert sorted(handed[eps]) == before.tolist() and len(before) > 0, eps
        broken_below = ~survived
    assert set(handed) == {0.05, 0.1}


def test_the_recheck_rejects_out_of_ball_and_out_of_box_adversarials(trained_model, mnist_test_small):
    model, _ = trained_model
    fmodel = foolbox_model(model, "cpu")
    x, y = mnist_test_small
    x, y = to_unit_float(x[:20]), y[:20]
    flipped = 1 - x  # far outside any small ball, inside the box: the model misreads most of them
    fooled = model(flipped).argmax(1) != y
    assert fooled.any()
    ok = verify_adversarials(fmodel, x, flipped, y, None, "l2")
    assert torch.equal(ok, fooled)  # no ε: only box and prediction matter
    assert not verify_adversarials(fmodel, x, flipped, y, 0.3, "linf").any()  # out of the ball
    nudged = x.clone()
    nudged[:, 0, 0, 0] = 1.5  # out of the box by 0.5, in the L-inf ball of 0.6
    assert not verify_adversarials(fmodel, x, nudged, y, 0.6, "linf").any()
    nan = flipped.clone()
    nan[:, 0, 0, 0] = float("nan")
    assert not verify_adversarials(fmodel, x, nan, y, None, "l2").any()
    exact = x + 0.1  # exactly on the ball's edge (and in the box where x <= 0.9) is allowed
    edge = verify_adversarials(fmodel, x, exact.clamp(max=1), y, 0.1, "linf")
    assert torch.equal(edge, model(exact.clamp(max=1)).argmax(1) != y)


def test_clean_misclassified_examples_count_as_broken(trained_model, mnist_test_small):
    model, _ = trained_model
    fmodel = foolbox_model(model, "cpu")
    x, y = mnist_test_small
    x, y = to_unit_float(x[:200]), y[:200]
    wrong = model(x).argmax(1) != y
    assert wrong.any()
    from robench.attacks import fixed_eps_accuracy

    for name in ("apgd-ce", "square"):
        robust = fixed_eps_accuracy(load_specs()[name], fmodel, x, y, 0.02, seed=0)
        assert (robust[wrong] == 0).all(), name


def test_fab_t_outcomes_do_not_depend_on_batch_composition(trained_model, mnist_test_small):
    """FAB-T on 40 images in one batch, in batches of 13, and shuffled: the same outcome per example."""
    from robench.attacks import fixed_eps_accuracy, foolbox_model
    from robench.data import to_unit_float

    model, _ = trained_model
    spec = load_specs()["fab-t"]
    assert spec.per_example and spec.engine == "torchattacks"
    x, y = to_unit_float(mnist_test_small[0][:40]), mnist_test_small[1][:40]
    fmodel = foolbox_model(model, "cpu")
    whole = fixed_eps_accuracy(spec, fmodel, x, y, 0.1, seed=0, indices=torch.arange(40))
    split = torch.cat([fixed_eps_accuracy(spec, fmodel, x[i : i + 13], y[i : i + 13], 0.1, seed=0,
                                          indices=torch.arange(i, min(i + 13, 40))) for i in range(0, 40, 13)])  # fmt: skip
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    shuffled = torch.empty(40)
    shuffled[order] = fixed_eps_accuracy(spec, fmodel, x[order], y[order], 0.1, seed=0, indices=order).float()
    assert torch.equal(whole.float(), split.float()) and torch.equal(whole.float(), shuffled)
    assert 0 < whole.float().mean() < 1  # it broke some and not all: the comparison means something


def test_fab_t_run_once_per_target_gives_each_eps_the_outcome_of_fab_t_at_that_eps(trained_model, mnist_test_small):
    """The cascade's FAB-T (`robench.attacks.fab_reuse`) over a grid of ε, on the survivors as the cascade
    hands them on (broken at ε stays broken), equals `fab-t` run at each ε alone, example by example, and
    runs fewer target runs than one FAB-T per ε."""
    from robench.attacks import fixed_eps_accuracy
    from robench.attacks import torchattacks_engine
    from robench.attacks.fab_reuse import FabTargets

    model, _ = trained_model
    spec = load_specs()["fab-t"]
    assert spec.eps_free and not spec.variant(votes=20).eps_free  # a randomized model runs FAB-T at each ε
    n = 40
    x, y = to_unit_float(mnist_test_small[0][:n]), mnist_test_small[1][:n]
    fmodel = foolbox_model(model, "cpu")
    runs, single = [], torchattacks_engine.fab_target_run

    def counted(spec, model, images, *args, **kwargs):
        runs.append(len(images))
        return single(spec, model, images, *args, **kwargs)

    cache, alive = FabTargets(n), model(x).argmax(1) == y
    torchattacks_engine.fab_target_run = counted
    try:
        for eps in (0.02, 0.05, 0.1, 0.15):
            alone = fixed_eps_accuracy(spec, fmodel, x, y, eps, seed=0, indices=torch.arange(n)) >= 1
            rows = alive.nonzero().flatten()
            broken = cache.broken(spec, fmodel, x, y, rows, eps, seed=0)
            assert torch.equal(alone[rows], ~broken), eps  # an example the carry dropped was broken below ε
            assert not (alone & ~alive).any()  # FAB-T alone breaks what it broke at a smaller ε
            alive[rows[broken]] = False
            assert 0 < broken.sum() < len(rows) or eps == 0.15, eps  # the comparison has teeth
    finally:
        torchattacks_engine.fab_target_run = single
    per_eps = 9 * int((model(x).argmax(1) == y).sum()) * 4  # an upper bound of one FAB-T per ε
    assert sum(runs) < per_eps / 2, (sum(runs), per_eps)


def test_attacks_lists_engines_and_bad_specs_get_one_line(tmp_path):
    result = invoke("attacks")
    assert result.exit_code == 0
    for name, engine in (("apgd-ce", "torchattacks"), ("apgd-t", "torchattacks"), ("square", "torchattacks"),
                         ("ddn", "foolbox"), ("pgd", "foolbox"), ("autoattack", "suite")):  # fmt: skip
        assert any(line.split("│")[1].strip() == name and engine in line for line in result.output.splitlines()
                   if "│" in line), name
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    base = (load_specs.__globals__["_spec_dir"](None) / "apgd-ce.toml").read_text()
    for old, new, message in (
        ('engine = "torchattacks"', 'engine = "cleverhans"', "unknown engine 'cleverhans'"),
        ("steps = 100", "stepz = 100", "APGD takes no parameter 'stepz'"),
        ("steps = 100", 'steps = "many"', "must be an integer"),
        ('class = "APGD"', 'class = "NoSuchAttack"', "unknown torchattacks attack class"),
        ('norm = "Linf"', 'norm = "L2"', "does not match APGD's norm"),
    ):
        (specs_dir / "apgd-ce.toml").write_text(base.replace(old, new, 1))
        with pytest.raises(Exception) as info:
            load_specs(specs_dir)
        assert message in str(info.value) and "apgd-ce.toml" in str(info.value) and "\n" not in str(info.value)
    bad = invoke("eval", "x", "--attack", "nosuch", "--n", "5")
    assert bad.exit_code == 1 and "unknown attack 'nosuch'" in bad.output and "Traceback" not in bad.output


def test_suites_and_the_default_protocol():
    suites = load_suites()
    assert [m.name for m in suites["autoattack"].members] == ["apgd-ce", "apgd-t", "fab-t", "square-pe"]
    assert {m.norm for m in suites["autoattack-l2"].members} == {"l2"}
    assert [a.name for a in resolve("default")] == ["noise", "fgsm", "pgd", "cw", "autoattack"]
    assert EvalConfig().attacks == "default"
