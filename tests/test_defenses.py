"""PGD adversarial training, TRADES and input-gradient regularization: their losses against direct
computations, their examples inside the threat model, and a PGD-AT model that is more robust."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from robench.cli import cli
from robench.defenses import input_gradient_sq, pgd_examples, trades_examples, trades_loss
from robench.models import build_model, xavier_init_
from robench.data import to_unit_float
from robench.train import TrainConfig, train


@pytest.fixture(scope="module")
def batch(mnist_train_small):
    x, y = mnist_train_small
    return to_unit_float(x[:32]), y[:32]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return xavier_init_(build_model("mlp", "mnist")).eval()


def test_trades_loss_is_ce_plus_beta_kl(model, batch):
    """On a fixed batch and fixed x_adv: CE(f(x), y) + beta * (1/B) sum_i sum_c p_c(x_i) log(p_c(x_i) / p_c(x_adv_i))."""
    x, y = batch
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    logits, adv_logits = model(x), model(x_adv)
    p, q = F.softmax(logits.double(), 1), F.softmax(adv_logits.double(), 1)
    direct = F.cross_entropy(logits.double(), y) + 6.0 * (p * (p.log() - q.log())).sum(1).mean()
    assert trades_loss(logits, adv_logits, y, 6.0).item() == pytest.approx(direct.item(), rel=1e-5)
    assert trades_loss(logits, logits, y, 6.0).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_pgd_and_trades_examples_stay_in_the_ball_and_the_box_and_leave_no_grad(model, batch, eps):
    x, y = batch
    model.train()  # the attacks switch to eval mode for themselves and restore the mode
    for make in (lambda: pgd_examples(model, x, y, eps, 7, generator=torch.Generator().manual_seed(0)),
                 lambda: trades_examples(model, x, eps, 7, generator=torch.Generator().manual_seed(0))):  # fmt: skip
        x_adv = make()
        assert (x_adv - x).abs().max().item() <= eps + 1e-6
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
        assert (x_adv - x).abs().max().item() > 0.5 * eps  # it moved
        assert model.training and all(p.grad is None for p in model.parameters())
        assert all(p.requires_grad for p in model.parameters())
    model.eval()
    pgd = pgd_examples(model, x, y, eps, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert F.cross_entropy(model(pgd), y) > F.cross_entropy(model(x), y)  # it is an attack


def test_igr_penalty_is_the_squared_input_gradient_and_its_gradient_checks_in_float64():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x, y = torch.rand(5, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
    scale = torch.tensor([0.3]).view(1, 1, 1, 1).double()
    _, sq = input_gradient_sq(net, x, y, input_scale=scale)
    for i in range(len(y)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xi), y[i : i + 1]), xi)
        assert sq[i].item() == pytest.approx(((g * scale) ** 2).sum().item(), rel=1e-10)
    weight = net[1].weight

    def igr(w):
        params = {k: v for k, v in net.named_parameters()}
        params["1.weight"] = w
        xx = x.clone().requires_grad_(True)
        ce = F.cross_entropy(torch.func.functional_call(net, params, (xx,)), y, reduction="sum")
        (g,) = torch.autograd.grad(ce, xx, create_graph=True)
        return (g * scale).flatten(1).pow(2).sum(1).mean()

    assert torch.autograd.gradcheck(igr, (weight.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


EPOCHS = 5


def test_pgd_adversarial_training_beats_plain_training_under_pgd(tmp_path):
    """A small real run: MLP, 3,000 MNIST images, 5 epochs, PGD-5 at eps 0.1 against the plain model,
    both attacked by robench's PGD-40 at eps 0.1 on 200 test images. Measured on seeds 0, 1, 2: plain
    0.125, 0.130, 0.140; PGD-AT 0.470, 0.475, 0.445 (+30.5 to +34.5 points). The test asks for +20:
    a 200-image accuracy near 0.5 has a standard error of 3.5 points, so +20 is ~4 of them below the
    smallest measured gap, and far above what a no-op PGD-AT (a gap of 0) could reach."""
    from robench.evaluate import EvalConfig, evaluate
    from robench.sources import from_run

    base = dict(model="mlp", epochs=EPOCHS, lr=0.05, train_subset=3000, test_subset=200, norm_samples=10, device="cpu",
                warmup_epochs=0.5)  # fmt: skip
    train(TrainConfig(**base), tmp_path / "plain", show_progress=False)
    train(TrainConfig(**base, adv_train="pgd", adv_eps=0.1, adv_steps=5), tmp_path / "pgd-at", show_progress=False)
    df = evaluate([from_run(tmp_path / "plain"), from_run(tmp_path / "pgd-at")],
                  EvalConfig(attacks="pgd", eps=(0.1,), n=200, device="cpu", jacobian_n=0), out=tmp_path / "r.csv",
                  show_progress=False)  # fmt: skip
    acc = df[df["attack"] == "pgd"].set_index("defense")["accuracy"]
    assert acc["pgd-at@0.1(k=5)"] - acc["none"] >= 0.20, acc.to_dict()


@pytest.mark.parametrize("args, message", [
    (["--adv-steps", "0"], "--adv-steps must be an integer >= 1"),
    (["--adv-train", "trades", "--adv-eps", "0.1", "--trades-beta", "-1"], "--trades-beta must be >= 0"),
    (["--igr", "-1"], "--igr must be >= 0"),
    (["--adv-train", "pgd"], "--adv-train needs --adv-eps > 0"),
    (["--adv-mix", "2", "--adv-train", "pgd", "--adv-eps", "0.1"], "--adv-mix"),
    (["--igr", "0.1", "--compile"], "--compile cannot be combined"),
])  # fmt: skip
def test_bad_defense_options_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["train", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "r"), *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "r").exists()


def test_defense_labels_read_well():
    assert TrainConfig(adv_train="pgd", adv_eps=0.3).defense == "pgd-at@0.3"
    assert TrainConfig(adv_train="trades", adv_eps=0.3, trades_beta=6).defense == "trades(6)@0.3"
    assert TrainConfig(igr=0.1).defense == "igr=0.1"
    assert TrainConfig(igr=0.1, jr_units="pixel").defense == "igr=0.1(pixel)"
