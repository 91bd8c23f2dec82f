"""An `eval` with nothing left to do answers from the store (robench.eval_done): before torch, a model, the
test set or an engine loads; with the same tables; and only when the full evaluation would write nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from robench.eval_done import finished_table
from robench.evaluate import evaluate
from robench.evaluate_keys import expected_rows
from robench.results import JACOBIAN_NORMALIZED, ResultsStore
from robench.settings import EvalConfig
from robench.sources import from_run

ATTACKS = "noise,fgsm,pgd,cw,autoattack-fast"  # every kind: baseline, fixed, traced, minimization, a cascade
CONFIG = dict(attacks=ATTACKS, eps=(0.0, 0.05, 0.1), n=30, device="cpu", jacobian_n=30)
RUN = """
import sys
from robench.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "foolbox", "torchattacks") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), "EXIT=" + str(code))
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained_run):
    """A run dir and a store holding every row of CONFIG's evaluation."""
    out = tmp_path_factory.mktemp("done") / "r.csv"
    evaluate([from_run(trained_run)], EvalConfig(**CONFIG), out=out, show_progress=False)
    return trained_run, out


def _cli(*args, cwd=None):
    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)  # fmt: skip


def _eval_args(run, out, **changes):
    options = {"--attack": ATTACKS, "--eps": "0,0.05,0.1", "--n": "30", "--device": "cpu", "--jacobian-n": "30",
               **changes}  # fmt: skip
    return ["eval", run, *[x for kv in options.items() for x in kv], "--quiet", "--out", out]


def test_the_keys_it_expects_are_those_the_evaluation_wrote(evaluated):
    """One copy of the row keys (robench.evaluate_keys): what the evaluation wrote is exactly what the fast
    path asks the store for (derived worst-case rows and a cascade's member rows aside)."""
    run, out = evaluated
    source = from_run(run)
    with ResultsStore(out, readonly=True) as store:
        written = {(r.attack, r.spec_hash, round(float(r.epsilon), 12)) for r in store.table().itertuples()
                   if not r.attack.startswith("worst_case") and "." not in r.attack}  # fmt: skip
    wanted = expected_rows(EvalConfig(**CONFIG), source.dataset, 30, 1, lambda: True)
    assert JACOBIAN_NORMALIZED in {a for a, _, _ in written}  # the MLP normalizes its input itself
    assert wanted == written
    assert finished_table((str(run),), EvalConfig(**CONFIG), out) is not None


def test_a_rerun_imports_no_torch_and_prints_the_same(evaluated, tmp_path):
    run, out = evaluated
    first = _cli(*_eval_args(run, out))
    second = _cli(*_eval_args(run, out))
    assert first.stdout.splitlines()[-1] == "HEAVY= EXIT=0", first.stderr[-2000:]
    assert second.stdout == first.stdout and second.stderr == first.stderr
    assert "autoattack-fast" in first.stdout


@pytest.mark.parametrize("change", [{"--eps": "0,0.05,0.1,0.2"}, {"--attack": ATTACKS + ",apgd-ce"}, {"--seed": "1"},
                                    {"--n": "31"}, {"--jacobian-n": "10"}, {"--eot": "2"}],
                         ids=["new-eps", "new-attack", "seed", "n", "jacobian-n", "eot"])  # fmt: skip
def test_anything_left_to_do_is_left_to_the_evaluation(evaluated, change):
    """Each change asks for a row the store lacks (or cannot be decided without the engines): no answer."""
    run, out = evaluated
    options = dict(CONFIG)
    key = {"--eps": "eps", "--attack": "attacks", "--seed": "seed", "--n": "n", "--jacobian-n": "jacobian_n",
           "--eot": "eot"}[next(iter(change))]  # fmt: skip
    value = next(iter(change.values()))
    options[key] = tuple(float(e) for e in value.split(",")) if key == "eps" else value if key == "attacks" else int(value)
    assert finished_table((str(run),), EvalConfig(**options), out) is None


def test_other_weights_or_a_missing_store_are_left_to_the_evaluation(evaluated, tmp_path):
    run, out = evaluated
    assert finished_table((str(run),), EvalConfig(**CONFIG), tmp_path / "none.csv") is None
    other = tmp_path / "other"
    shutil.copytree(run, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: another model_hash
    weights.write_bytes(bytes(data))
    assert finished_table((str(other),), EvalConfig(**CONFIG), out) is None
    assert finished_table((str(run), str(tmp_path / "missing")), EvalConfig(**CONFIG), out) is None


def test_the_static_kinds_are_foolboxs():
    """`static_kind` knows Foolbox's minimization attacks without importing Foolbox: the list is Foolbox's."""
    import foolbox.attacks
    from foolbox.attacks.base import MinimizationAttack

    from robench.attacks.specs import FOOLBOX_MINIMIZATION

    found = {n for n in dir(foolbox.attacks) if isinstance(getattr(foolbox.attacks, n), type)
             and issubclass(getattr(foolbox.attacks, n), MinimizationAttack)}  # fmt: skip
    assert found == FOOLBOX_MINIMIZATION
