"""`autoattack-adaptive`: APGD-T and FAB-T on their 3 most likely wrong classes (`targets = 3`) and Square
with a budget that drops examples whose margin stopped falling. What each part spends less on, that it
spends it on nothing else, and the spec checks. Its strength against an independent attack on a JR LeNet'
is in tests/test_autoattack.py; against `autoattack` on the demo models, in docs/PERFORMANCE.md."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robench.attacks import fixed_eps_accuracy, foolbox_model, load_specs
from robench.attacks import torchattacks_engine
from robench.attacks.fab_reuse import FabTargets
from robench.attacks.robench_engine import Square
from robench.attacks.runners import fixed_eps_outcomes
from robench.attacks.suites import load_suites
from robench.data import to_unit_float
from robench.errors import RobenchError
from small_models import CountingModel

N = 60


@pytest.fixture(scope="module")
def batch(mnist_test_small):
    x, y = mnist_test_small
    return to_unit_float(x[:N]), y[:N]


def test_the_suite_and_its_members():
    specs, suite = load_specs(), load_suites()["autoattack-adaptive"]
    assert [m.name for m in suite.members] == ["apgd-ce", "apgd-t-3", "fab-t-3", "square-pe-adaptive"]
    assert specs["apgd-t-3"].targets == 3 and specs["fab-t-3"].targets == 3 and specs["apgd-t"].targets == 0
    assert specs["fab-t-3"].eps_free  # one run per target reused over the grid, as fab-t's
    for short, full in (("apgd-t-3", "apgd-t"), ("fab-t-3", "fab-t")):
        assert specs[short].spec_hash != specs[full].spec_hash  # targets is part of the identity
        assert dataclasses.replace(specs[short], targets=0).spec_hash == specs[full].spec_hash  # and all it changes
    adaptive, full = specs["square-pe-adaptive"], specs["square-pe"]
    assert {k: v for k, v in adaptive.params.items() if not k.startswith("progress_")} == full.params


@pytest.mark.parametrize(("line", "message"), [
    ("targets = 0", "targets must be a positive integer, got 0"),
    ('targets = "3"', "targets must be a positive integer"),
    ("targets = true", "targets must be a positive integer"),
])  # fmt: skip
def test_bad_targets_get_one_line(tmp_path, line, message):
    base = (load_specs.__globals__["_spec_dir"](None) / "apgd-t-3.toml").read_text()
    (tmp_path / "apgd-t-3.toml").write_text(base.replace("\ntargets = 3\n", f"\n{line}\n", 1))
    with pytest.raises(RobenchError) as info:
        load_specs(tmp_path)
    assert message in str(info.value) and "apgd-t-3.toml" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("other", ["apgd-ce.toml", "square-pe.toml"])
def test_targets_belongs_to_multi_targeted_attacks_only(tmp_path, other):
    base = (load_specs.__globals__["_spec_dir"](None) / other).read_text()
    (tmp_path / other).write_text(base.replace("\n[params]", "targets = 3\n\n[params]", 1))
    with pytest.raises(RobenchError, match="targets applies to torchattacks' multi-targeted attacks only"):
        load_specs(tmp_path)
    fab = (load_specs.__globals__["_spec_dir"](None) / "fab-t-3.toml").read_text()
    (tmp_path / other).unlink()
    (tmp_path / "fab-t-3.toml").write_text(fab.replace("multi_targeted = true", "multi_targeted = false"))
    with pytest.raises(RobenchError, match="multi-targeted attacks only"):
        load_specs(tmp_path)


def test_apgd_t_3_spends_a_third_of_apgd_ts_queries_on_examples_it_cannot_break(trained_model, batch):
    """At an ε too small to break anything both run every target they have on every example: 3 of 9."""
    model, _ = trained_model
    x, y = batch
    keep = model(x).argmax(1) == y
    x, y, idx = x[keep][:20], y[keep][:20], keep.nonzero().flatten()[:20]
    spent = {}
    for name in ("apgd-t", "apgd-t-3"):
        counting = CountingModel(model)
        advs = torchattacks_engine.adversarials(load_specs()[name], counting, x, y, 0.002, seed=0, indices=idx)
        assert (model(advs).argmax(1) == y).all()  # nothing broke: every target ran on every example
        spent[name] = counting.examples
    assert abs(spent["apgd-t-3"] / spent["apgd-t"] - 3 / 9) < 0.02, spent


def test_fab_t_3_reused_over_the_grid_equals_fab_t_3_at_each_eps(trained_model, batch):
    model, _ = trained_model
    x, y = batch
    spec, fmodel = load_specs()["fab-t-3"], foolbox_model(model, "cpu")
    cache, alive = FabTargets(N), model(x).argmax(1) == y
    for eps in (0.05, 0.1):
        alone = fixed_eps_accuracy(spec, fmodel, x, y, eps, seed=0, indices=torch.arange(N)) >= 1
        rows = alive.nonzero().flatten()
        broken = cache.broken(spec, fmodel, x, y, rows, eps, seed=0)
        assert torch.equal(alone[rows], ~broken), eps
        assert 0 < broken.sum() < len(rows), eps  # the comparison has teeth
        alive[rows[broken]] = False
    assert cache.size.shape[1] == 3  # three targets kept per example, not nine


def test_adaptive_square_breaks_only_what_square_pe_breaks_with_fewer_queries(trained_model, batch):
    """Same draws per example: until it drops an example, the adaptive Square's path is square-pe's. So it
    breaks a subset of what square-pe breaks (here: all of it), on fewer queries."""
    from robench.attacks.foolbox_engine import example_generators

    model, _ = trained_model
    x, y = batch
    x, y = x[:40], y[:40]
    runs = {}
    for name, window in (("full", 0), ("adaptive", 100)):
        square = Square(n_queries=1000, progress_window=window)
        advs = square(model, x, y, 0.08, example_generators(0, torch.arange(40), 40, stream=7))
        runs[name] = (model(advs).argmax(1) != y, square.queries.clone())
    (full, q_full), (adaptive, q_adaptive) = runs["full"], runs["adaptive"]
    assert not (adaptive & ~full).any()
    assert 0 < full.sum() < 40, int(full.sum())  # some break, some hold: the comparison has teeth
    robust = ~full & (model(x).argmax(1) == y)
    assert (q_full[robust] == 1000).all()  # the full Square spends its budget on every robust example
    assert q_adaptive[robust].float().mean() < 0.8 * 1000, q_adaptive[robust]  # the adaptive one does not
    assert int(full.sum() - adaptive.sum()) <= 1, (int(full.sum()), int(adaptive.sum()))
    print(f"broken: full {int(full.sum())}, adaptive {int(adaptive.sum())}; queries on the robust: "
          f"{q_full[robust].float().mean():.0f} vs {q_adaptive[robust].float().mean():.0f}")


def test_adaptive_square_outcomes_do_not_depend_on_which_examples_share_the_call(trained_model, batch):
    model, _ = trained_model
    x, y = batch
    spec = load_specs()["square-pe-adaptive"]
    spec = dataclasses.replace(spec, params={**spec.params, "n_queries": 400, "progress_window": 50})
    fmodel, idx = foolbox_model(model, "cpu"), torch.randperm(N, generator=torch.Generator().manual_seed(2))[:39]
    whole = fixed_eps_outcomes(spec, fmodel, x[idx], y[idx], 0.1, seed=0, indices=idx).robust
    parts = torch.cat([fixed_eps_outcomes(spec, fmodel, x[idx[a : a + 13]], y[idx[a : a + 13]], 0.1, seed=0,
                                          indices=idx[a : a + 13]).robust for a in range(0, 39, 13)])  # fmt: skip
    assert torch.equal(whole, parts) and 0 < whole.mean() < 1


def test_bad_progress_parameters_are_refused():
    for kwargs in ({"progress_window": -1}, {"progress_slack": 0.0}):
        with pytest.raises(ValueError, match="progress_window must be >= 0"):
            Square(**kwargs)


def test_one_recorded_full_run_prices_every_budget_exactly(trained_model, batch):
    """`Square.replay` on a full run's margin history gives what the adaptive run itself gives, example by
    example (broken, and queries spent): the bench's drop-rule table rests on it."""
    from robench.attacks.foolbox_engine import example_generators

    model, _ = trained_model
    x, y = batch
    gens = lambda: example_generators(0, torch.arange(N), N, stream=7)  # noqa: E731
    full = Square(n_queries=600)
    full.record = True
    full(model, x, y, 0.08, gens())
    assert full.margin_history.shape == (N, 601)
    for window, slack in ((100, 2.0), (50, 0.5)):
        adaptive = Square(n_queries=600, progress_window=window, progress_slack=slack)
        broken = model(adaptive(model, x, y, 0.08, gens())).argmax(1) != y
        replayed, queries = adaptive.replay(full.margin_history)
        assert torch.equal(replayed, broken | (model(x).argmax(1) != y)), window
        assert torch.equal(queries, adaptive.queries), window
    assert torch.equal(Square(n_queries=600).replay(full.margin_history)[1], full.queries)
