"""Protocol 3: the re-check's relative tolerance, one number per row key for the suites' carried grids,
the worst case's carry of breaks to larger ε, prefix reuse only where exact, and full fp32 for the
re-check and the exact ||J|| rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robench.attacks import PROTOCOL, _seeded, foolbox_model, load_specs, verify_adversarials
from robench.attacks.suites import load_suites
from robench.cli import cli
from robench.data import to_unit_float
from robench.devices import full_fp32
from robench.results import ResultsStore, outcomes, read_results
from robench.results.derived import worst_case_rows
from robench.results.select import current_rows


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


class _WrongClass(torch.nn.Module):
    """Predicts class 1 for every input: every image counts as fooled when its label is 0, so the
    re-check's verdict is decided by the ball and the box alone."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.ones(len(x), dtype=torch.long), 10).float() + 0 * x.flatten(1)[:, :1]


def _noise_draws(images: torch.Tensor, eps: float, repeats: int) -> list[torch.Tensor]:
    """robench's noise spec (Foolbox's clipping-aware L2 Gaussian noise, per-example draws) at ε."""
    spec = load_specs()["noise"]
    fmodel = foolbox_model(_WrongClass(), "cpu")
    labels = torch.zeros(len(images), dtype=torch.long)
    attack = spec.build()
    draws = []
    with _seeded(spec, attack, 0, torch.arange(len(images)), len(images)):
        for _ in range(repeats):
            draws.append(attack(fmodel, images, labels, epsilons=eps)[1])
    return draws


@pytest.mark.parametrize("shape", [None, (3, 32, 32), (3, 224, 224)], ids=["mnist", "cifar-size", "imagenet-size"])
def test_noise_at_l2_eps_16_rejects_no_draw_foolbox_clipped_to_eps(mnist_test_small, shape):
    if shape is None:
        images, grid = to_unit_float(mnist_test_small[0][:200]), (12.0, 16.0)
    else:
        count, grid = (30, (8.0, 16.0)) if shape[1] == 32 else (6, (16.0, 64.0))  # the largest of their grids
        images = torch.rand((count, *shape), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(len(images), dtype=torch.long)
    for eps in grid:
        for adv in _noise_draws(images, eps, repeats=3):
            size = (adv.double() - images.double()).flatten(1).norm(dim=1)
            clipped = torch.isclose(size, torch.full_like(size, eps), rtol=1e-6, atol=0)  # Foolbox reached ε
            assert clipped.double().mean() > 0.9, (eps, size)
            assert verify_adversarials(_WrongClass(), images, adv, labels, eps, "l2")[clipped].all()


def test_the_norm_tolerance_is_relative_and_absolute():
    x = torch.full((1, 3, 224, 224), 0.5)  # room for an L2 norm of 64 inside the box
    labels = torch.zeros(1, dtype=torch.long)
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    direction = signs / signs.norm()

    def accepted(eps, factor, **kw):
        return bool(verify_adversarials(_WrongClass(), x, x.double() + direction * eps * factor, labels, eps, "l2",
                                        **kw))  # fmt: skip

    assert accepted(64.0, 1 + 1e-7)  # float32's error at a norm of 64 ...
    assert not accepted(64.0, 1 + 1e-7, relative=0.0)  # ... which the absolute 1e-6 alone rejected
    assert not accepted(64.0, 1 + 1e-4)
    assert accepted(0.01, 1 + 1e-5) and not accepted(0.01, 1 + 1e-3)  # small ε: the absolute 1e-6 decides


class _FlagSpy(torch.nn.Module):
    """A linear model that records the TF32 flags in force at each forward pass."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return self.fc(x.flatten(1))


def test_the_recheck_and_the_exact_jacobian_rows_run_in_full_fp32(mnist_test_small):
    from robench.evaluate import _clean_rows

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        x, y = to_unit_float(mnist_test_small[0][:8]), mnist_test_small[1][:8]
        spy = _FlagSpy().eval()
        verify_adversarials(spy, x, x, y, 0.1, "linf")
        base = {"model": "m", "dataset": "mnist", "defense": "none", "n": 8, "seed": 0, "robench_version": "t",
                "model_hash": "h", "protocol": PROTOCOL}  # fmt: skip
        rows = _clean_rows(spy, x, y, base, ["jacobian_norm"])
        assert spy.seen and all(flags == (False, False) for flags in spy.seen)
        assert rows[0]["value"] > 0
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)  # restored
        with pytest.raises(RuntimeError), full_fp32():
            raise RuntimeError("restored on errors too")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# -- the worst case carries breaks to larger ε --------------------------------------------------------------

def _row(attack, eps, robust, *, protocol=PROTOCOL, n=None, distance=None, norm="linf", spec="s"):
    robust = np.asarray(robust, dtype=float)
    return {"model": "m", "dataset": "mnist", "defense": "none", "n": n or len(robust), "seed": 0,
            "model_hash": "h", "protocol": protocol, "robench_version": "t", "attack": attack, "norm": norm,
            "epsilon": eps, "spec_hash": spec, "accuracy": float(robust.mean()), "attack_params": "{}",
            "timestamp": "2026", "value": float("nan"), "_robust": robust,
            "_distance": None if distance is None else np.asarray(distance, dtype=float)}  # fmt: skip


def test_a_break_at_a_smaller_eps_counts_at_every_larger_eps_of_the_worst_case():
    rng = np.random.default_rng(0)
    grid = {"fgsm": [0.0, 0.1], "pgd": [0.0, 0.1, 0.2, 0.3], "square": [0.0, 0.2]}  # pgd alone at 0.3
    clean = rng.random(40) < 0.9  # as in real rows: ε = 0 is clean correctness, broken there is broken everywhere
    rows = [_row(a, e, clean & (rng.random(40) < (1 - 2 * e))) for a, eps in grid.items() for e in eps]
    worst = {r["epsilon"]: r for r in worst_case_rows(rows, {})}
    assert sorted(worst) == [0.0, 0.1, 0.2, 0.3]
    for eps, row in worst.items():  # per example: broken at any ε' <= ε by any attack
        expected = np.ones(40, dtype=bool)
        for r in rows:
            if r["epsilon"] <= eps:
                expected &= r["_robust"] >= 1
        np.testing.assert_array_equal(row["_robust"] >= 1, expected)
    accuracies = [worst[e]["accuracy"] for e in sorted(worst)]
    assert accuracies == sorted(accuracies, reverse=True)  # never rises with ε
    assert json.loads(worst[0.3]["attack_params"])["carried_eps"] == {"fgsm": [0.1], "pgd": [0.1, 0.2],
                                                                       "square": [0.2]}  # fmt: skip
    # the identity names what was carried: a new row at 0.2 changes the keys at 0.2 and 0.3 only
    more = worst_case_rows(rows + [_row("fgsm", 0.2, rng.random(40) < 0.5)], {})
    changed = {r["epsilon"] for r in more if r["spec_hash"] != worst[r["epsilon"]]["spec_hash"]}
    assert changed == {0.2, 0.3}


def test_older_protocols_keep_their_worst_case():
    rows = [_row("fgsm", 0.1, [0, 1, 1], protocol=2), _row("pgd", 0.1, [1, 1, 1], protocol=2),
            _row("pgd", 0.3, [1, 1, 0], protocol=2)]  # fmt: skip
    worst = worst_case_rows(rows, {})
    assert [(r["epsilon"], r["accuracy"]) for r in worst] == [(0.1, pytest.approx(2 / 3))]  # no carry to 0.3
    assert len({r["spec_hash"] for r in worst}) == 1 and "carried_eps" not in worst[0]["attack_params"]


def test_the_store_carries_breaks_to_an_eps_some_attacks_did_not_run(tmp_path, trained_run):
    out = tmp_path / "carry.csv"
    common = ["--n", "40", "--device", "cpu", "--quiet", "--out", out]
    assert invoke("eval", trained_run, "--attack", "fgsm", "--eps", "0,0.05", *common).exit_code == 0
    assert invoke("eval", trained_run, "--attack", "pgd", "--eps", "0,0.05,0.1", *common).exit_code == 0
    per = outcomes(out)
    vec = lambda a, e: per[(per["attack"] == a) & np.isclose(per["epsilon"], e)].sort_values("example")[  # noqa: E731
        "robust"].to_numpy() >= 1
    worst = read_results(out).query("attack == 'worst_case'").set_index("epsilon")
    assert worst.loc[0.1, "accuracy"] == pytest.approx((vec("fgsm", 0.05) & vec("pgd", 0.05) & vec("pgd", 0.1)).mean())
    assert worst.loc[0.1, "accuracy"] <= worst.loc[0.05, "accuracy"] and set(worst["protocol"]) == {PROTOCOL}


# -- suites: one key, one number -----------------------------------------------------------------------------

def test_a_suite_row_key_names_the_grid_it_carried():
    suite = load_suites()["autoattack"]
    default = suite.default_eps("mnist")
    assert suite.row_hash(0.3, [0.3]) == suite.row_hash(0.3, [0.0, 0.3]) == suite.spec_hash  # nothing carried
    assert suite.row_hash(0.3, default) != suite.row_hash(0.3, [0.3])
    assert suite.row_hash(0.3, default) == suite.row_hash(0.3, [e for e in default if e <= 0.3])  # larger ε: no part
    assert suite.row_hash(0.3, default) == suite.row_hash(0.3, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.7])
    counts = json.loads(suite.member_params(suite.members[1], 0.3, default))
    assert counts["carried_eps"][-1] == 0.25 and "apgd-ce, apgd-t at eps" in counts["counts"]


def test_the_suite_row_at_an_eps_is_the_same_alone_or_after_a_grid(tmp_path, trained_run):
    alone, grid = tmp_path / "alone.csv", tmp_path / "grid.csv"
    common = ["--attack", "autoattack-fast", "--n", "20", "--device", "cpu", "--quiet"]
    assert invoke("eval", trained_run, *common, "--eps", "0.1", "--out", alone).exit_code == 0
    assert invoke("eval", trained_run, *common, "--eps", "0,0.05,0.1", "--out", grid).exit_code == 0
    assert invoke("eval", trained_run, *common, "--eps", "0.1", "--out", grid).exit_code == 0  # after the grid
    a, g = (df[df["attack"].str.startswith("autoattack-fast")] for df in (read_results(alone), read_results(grid)))
    key = ["attack", "spec_hash", "epsilon", "n", "seed", "protocol"]
    at = g[(g["attack"] == "autoattack-fast") & np.isclose(g["epsilon"], 0.1)]
    assert at["spec_hash"].nunique() == 2  # carried from 0.05, and alone: two keys
    merged = a.merge(g, on=key, suffixes=("", "_grid"))
    assert len(merged) == len(a) == 4  # every row of the lone run is in the grid's store, under its key
    np.testing.assert_array_equal(merged["accuracy"], merged["accuracy_grid"])
    carried = g[(g["attack"] == "autoattack-fast.square-pe-1k") & np.isclose(g["epsilon"], 0.1)]
    assert {tuple(json.loads(p)["carried_eps"]) for p in carried["attack_params"]} == {(), (0.05,)}
    # both grids are one spec: every ε stays current, the worst case reads them all, the carried row is drawn
    everything = read_results(grid)
    shown = current_rows(everything).query("attack == 'autoattack-fast'").set_index("epsilon")
    assert sorted(shown.index) == [0.0, 0.05, 0.1]
    assert json.loads(shown.loc[0.1, "attack_params"])["carried_eps"] == [0.05]
    worst = everything.query("attack == 'worst_case'")
    assert sorted(worst["epsilon"]) == [0.0, 0.05, 0.1]
    suite_at = g[(g["attack"] == "autoattack-fast") & np.isclose(g["epsilon"], 0.1)]["accuracy"]
    assert worst.set_index("epsilon").loc[0.1, "accuracy"] <= suite_at.min() + 1e-12


# -- prefix reuse only where exact ---------------------------------------------------------------------------

def test_a_larger_evaluation_joins_a_smaller_one_only_where_exact(tmp_path):
    rng = np.random.default_rng(0)
    with ResultsStore(tmp_path / "prefix.csv") as store:
        store.add([_row("apgd-ce-l2", 1.0, rng.random(200) < 0.7, norm="l2"),  # per example
                   _row("cw", 1.0, rng.random(200) < 0.7, norm="l2", distance=rng.random(200) * 3)])  # chunked
        for n in (150, 100):
            store.add([_row("pgd-l2", 1.0, rng.random(n) < 0.7, norm="l2")])
        table = store.table()
    worst = table[table["attack"] == "worst_case"].set_index("n")
    assert set(json.loads(worst.loc[150, "attack_params"])["attacks"]) == {"apgd-ce-l2", "pgd-l2"}  # CW cut short
    assert set(json.loads(worst.loc[100, "attack_params"])["attacks"]) == {"apgd-ce-l2", "cw", "pgd-l2"}  # whole chunks
