"""robench's own Square (engine "robench"): AutoAttack's Square with every random draw made per example, so an
example's outcome depends on it alone (the cascade can then hand Square its survivors only), and as strong as
torchattacks' Square, whose draws are shared by the batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robench.attacks import foolbox_model, load_specs
from robench.attacks.runners import fixed_eps_outcomes
from robench.data import to_unit_float

N = 100


@pytest.fixture(scope="module")
def batch(mnist_test_small):
    x, y = mnist_test_small
    return to_unit_float(x[:N]), y[:N]


def _with_queries(name: str, queries: int):
    spec = load_specs()[name]
    return dataclasses.replace(spec, params={**spec.params, "n_queries": queries})


def test_outcomes_do_not_depend_on_which_examples_share_the_call(trained_model, batch):
    model, _ = trained_model
    fmodel, spec = foolbox_model(model, "cpu"), _with_queries("square-pe", 200)
    x, y = batch
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(1))[:40]
    whole = fixed_eps_outcomes(spec, fmodel, x[idx], y[idx], 0.1, seed=0, indices=idx).robust
    parts = torch.cat([fixed_eps_outcomes(spec, fmodel, x[idx[a : a + 13]], y[idx[a : a + 13]], 0.1, seed=0,
                                          indices=idx[a : a + 13]).robust for a in range(0, 40, 13)])  # fmt: skip
    assert torch.equal(whole, parts)
    assert 0 < whole.mean() < 1  # it broke some, not all: the comparison means something
    other_seed = fixed_eps_outcomes(spec, fmodel, x[idx], y[idx], 0.1, seed=1, indices=idx).robust
    assert not torch.equal(whole, other_seed) or whole.mean() in (0.0, 1.0)


def test_as_strong_as_torchattacks_square_on_average_over_seeds(trained_model, batch):
    """Same algorithm, different random streams: over 3 seeds the robust accuracies agree within 3 points."""
    model, _ = trained_model
    fmodel = foolbox_model(model, "cpu")
    x, y = batch
    ours, theirs = _with_queries("square-pe", 500), _with_queries("square", 500)
    mean = lambda spec: sum(fixed_eps_outcomes(spec, fmodel, x, y, 0.1, seed=s).robust.mean().item()  # noqa: E731
                            for s in range(3)) / 3  # fmt: skip
    a, b = mean(ours), mean(theirs)
    print(f"square-pe {a:.3f} vs torchattacks square {b:.3f}")
    assert abs(a - b) <= 0.03, (a, b)


def test_the_spec_is_per_example_and_checked():
    spec = load_specs()["square-pe"]
    assert spec.engine == "robench" and spec.per_example and spec.access == "black-box" and spec.kind == "fixed"
    from robench.attacks.robench_engine import check_class
    from robench.errors import RobenchError

    with pytest.raises(RobenchError, match="norm"):
        check_class("Square", {"norm": "Linf"}, "l2", "attack spec x.toml")
    with pytest.raises(RobenchError, match="takes no parameter"):
        check_class("Square", {"n_restarts": 2}, "linf", "attack spec x.toml")
    with pytest.raises(RobenchError, match="unknown robench attack class"):
        check_class("FAB", {}, "linf", "attack spec x.toml")
