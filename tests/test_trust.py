"""Can this evaluation be trusted? AutoAttack's checks as flags, on a real MNIST model wrapped the three
classic ways a model hides its gradients (Athalye et al. 2018), and on the honest model (no false alarms)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from robench import evaluate_model
from robench.checks import TRUST_FLAGS, warnings_for
from robench.model_probes import autograd_calls_in_forward, probe_model

ATTACKS = "fgsm,pgd,autoattack-fast"
EPS = [0.0, 0.1, 0.2]
N = 100


class ScaledLogits(nn.Module):
    """Logits x 1000: the softmax saturates, cross-entropy gradients vanish; decisions unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.tensor(1000.0))

    def forward(self, x):
        return self.model(x) * self.scale


class RoundedInput(nn.Module):
    """The input rounded to 255 levels: every input gradient is exactly zero."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("levels", torch.tensor(255.0))

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


class NoisyInput(nn.Module):
    """Gaussian noise (sigma 0.1) on every forward pass, also in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("sigma", torch.tensor(0.1))

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


class SoftmaxOutput(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class GradientInForward(nn.Module):
    """A 'dynamic' defense: one gradient step on the input inside the forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.model(z).logsumexp(1).sum(), z)
        return self.model((x - 0.01 * g.sign()).clamp(0, 1))


class Evaluations(dict):
    """{wrapper name: its rows}, and the directory of their CSVs."""

    def __init__(self, directory, rows):
        super().__init__(rows)
        self.directory = directory


def _flags(rows: pd.DataFrame) -> set[str]:
    return {f for cell in rows["flags"] for f in str(cell).split(";") if f}


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory, trained_model):
    model, _ = trained_model
    out = tmp_path_factory.mktemp("trust")
    wrapped = {"base": model, "scaled": ScaledLogits(model), "rounded": RoundedInput(model), "noisy": NoisyInput(model)}
    torch.manual_seed(0)
    return Evaluations(out, {name: evaluate_model(m, dataset="mnist", attacks=ATTACKS, eps=EPS, n=N, out=out / f"{name}.csv",
                                 device="cpu", name=name)
            for name, m in wrapped.items()})  # fmt: skip


def test_the_honest_model_fires_none_of_the_trust_flags(evaluations):
    assert not _flags(evaluations["base"]) & set(TRUST_FLAGS), evaluations["base"][["attack", "epsilon", "flags"]]


def test_rounding_the_input_fires_zero_gradients_on_gradient_attacks_only(evaluations):
    rows = evaluations["rounded"]
    flagged = rows[rows["flags"].str.contains("zero_gradients")]
    assert {"pgd", "fgsm", "autoattack-fast", "worst_case"} <= set(flagged["attack"])
    assert "autoattack-fast.square-pe-1k" not in set(flagged["attack"])  # Square needs no gradients
    assert not (rows[rows["epsilon"] == 0]["flags"].str.contains("zero_gradients")).any()
    # Square breaks what the zero gradients hid; the worst case a user reads says it rests on Square
    worst = rows[(rows["attack"] == "worst_case") & (rows["epsilon"] == 0.1)]
    assert worst["flags"].str.contains("blackbox_stronger").all()


def test_noise_on_every_forward_fires_randomized_model(evaluations):
    rows = evaluations["noisy"]
    assert "randomized_model" in _flags(rows)
    assert "randomized_model" not in _flags(evaluations["rounded"])


def test_scaled_logits_flag_cross_entropy_attacks_against_apgd_t(evaluations):
    rows = evaluations["scaled"]
    flagged = set(rows[rows["flags"].str.contains("ce_loss_masked")]["attack"])
    assert {"pgd", "autoattack-fast.apgd-ce"} <= flagged, rows[["attack", "epsilon", "accuracy", "flags"]]
    assert "ce_loss_masked" not in _flags(evaluations["base"])


def test_warnings_say_it_once_per_model_and_flag(evaluations):
    lines = [line for line in warnings_for(evaluations["rounded"]) if "[zero_gradients]" in line]
    assert len(lines) == 1 and "exactly zero" in lines[0]


def test_probes_see_probabilities_few_classes_and_gradients_in_forward(trained_model, mnist_test_small):
    model, _ = trained_model
    from robench.data import to_unit_float

    x, y = mnist_test_small
    x, y = to_unit_float(x[:20]), y[:20]
    honest = probe_model(model, x, y)
    assert honest == {**honest, "randomized": False, "zero_gradient_share": 0.0, "probabilities": False,
                      "classes": 10, "gradient_in_forward": 0}  # fmt: skip
    assert probe_model(SoftmaxOutput(model), x, y)["probabilities"]
    assert autograd_calls_in_forward(GradientInForward(model), x[:1]) >= 1
    assert probe_model(RoundedInput(model), x, y)["zero_gradient_share"] == 1.0


def test_blackbox_stronger_fires_when_square_breaks_what_gradients_left():
    """On a table: Square breaking 3 points after APGD-CE and APGD-T fires; 0.1 point does not."""
    import json

    from robench.checks import flag_rows

    def evaluation(square_after: float) -> pd.DataFrame:
        suite = json.dumps({"suite": [["apgd-ce", "a"], ["apgd-t", "b"], ["square-pe-1k", "c"]]})
        base = {"model": "m", "norm": "linf", "epsilon": 0.1, "n": 1000, "seed": 0, "protocol": 3, "spec_hash": "h"}
        return pd.DataFrame([
            {**base, "attack": "autoattack-fast.apgd-ce", "accuracy": 0.50, "attack_params": "{}"},
            {**base, "attack": "autoattack-fast.apgd-t", "accuracy": 0.48, "attack_params": "{}"},
            {**base, "attack": "autoattack-fast.square-pe-1k", "accuracy": square_after, "attack_params": "{}"},
            {**base, "attack": "autoattack-fast", "accuracy": square_after, "attack_params": suite},
        ])  # fmt: skip

    fired = flag_rows(evaluation(0.45))
    assert "blackbox_stronger" in fired.iloc[2] and "blackbox_stronger" in fired.iloc[3]
    assert not flag_rows(evaluation(0.479)).str.contains("blackbox_stronger").any()


def test_the_report_gathers_the_flags_in_its_trust_section(evaluations, tmp_path_factory):
    from robench.report import write_report

    out = tmp_path_factory.mktemp("trust-report")
    csvs = sorted(str(p) for p in evaluations.directory.glob("*.csv"))
    assert len(csvs) == 4
    text = (write_report(csvs, out / "rep").files[0].parent / "report.md").read_text()
    section = text.split("## Can this evaluation be trusted?")[1].split("\n## ")[0]
    for flag in ("zero_gradients", "randomized_model", "ce_loss_masked", "blackbox_stronger"):
        assert f"`{flag}`" in section, section
    assert "random outputs" in section and "deterministic outputs" in section
