"""The attacks search with a channels_last copy of a convolutional model on a CPU (`robench.attacks.fast_copy`):
the same function, made once per state of the weights and checked before every use, never used for a verdict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robench.attacks import foolbox_model, load_specs
from robench.attacks.fast_copy import attack_model
from robench.attacks.runners import fixed_eps_outcomes
from robench.checkpoint import load
from robench.data import to_unit_float
from small_models import CountingModel


@pytest.fixture(scope="module")
def lenet(jr_lenet):
    return load(jr_lenet)[0].eval()


@pytest.fixture(scope="module")
def images(mnist_test_small):
    x, y = mnist_test_small
    return to_unit_float(x[:100]), y[:100]


def test_a_conv_model_gets_one_channels_last_copy_computing_the_same_logits(lenet, images):
    x, _ = images
    fast = attack_model(lenet, x)
    assert fast is not lenet and attack_model(lenet, x) is fast  # made once, then reused
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.requires_grad
    with torch.no_grad():
        reference, copied = lenet(x), fast(x)
    assert (copied - reference).abs().max() < 1e-4
    assert torch.equal(copied.argmax(1), reference.argmax(1))


def test_the_copy_follows_weights_changed_in_place(jr_lenet, images):
    model, x = load(jr_lenet)[0].eval(), images[0]
    first = attack_model(model, x)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias.add_(torch.arange(10.0))  # in place: the version counter moves, the storage does not
    second = attack_model(model, x)
    assert second is not first
    last.bias.data.sub_(torch.arange(10.0))  # through .data: the counter does not move; the check sees it
    third = attack_model(model, x)
    assert third is not second
    with torch.no_grad():
        for fast in (third, attack_model(model, x)):
            assert (fast(x) - model(x)).abs().max() < 1e-4


class ViewFlatten(nn.Module):
    """A user's LeNet' flattening with .view, which channels_last activations do not allow."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net[1][:6](self.net[0](x))  # Normalize, then the conv/pool stack
        return self.net[1][7:](features.view(features.size(0), -1))


def test_a_model_its_copy_cannot_run_is_searched_as_it_is(lenet, images):
    user = ViewFlatten(lenet).eval()
    x, y = images[0][:20], images[1][:20]
    with torch.no_grad():
        assert torch.equal(user(x), lenet(x))
    assert attack_model(user, x) is user
    robust = fixed_eps_outcomes(load_specs()["fgsm"], foolbox_model(user, "cpu"), x, y, 0.1, seed=0).robust
    assert 0 < robust.mean() < 1


def test_copies_kept_are_bounded(jr_lenet, images):
    from robench.attacks import fast_copy

    models = [load(jr_lenet)[0].eval() for _ in range(fast_copy._KEPT + 2)]
    for model in models:
        assert attack_model(model, images[0]) is not model
    assert len(fast_copy._COPIES) <= fast_copy._KEPT


def test_no_copy_where_it_cannot_help_or_would_change_the_model(lenet, trained_model, images, monkeypatch):
    mlp, _ = trained_model
    x = images[0]
    assert attack_model(mlp, x) is mlp  # no convolution
    assert attack_model(lenet, x, votes=20) is lenet  # randomized: a copy would draw its own randomness
    lenet.train()
    try:
        assert attack_model(lenet, x) is lenet  # training mode: dropout and batch norm would differ
    finally:
        lenet.eval()
    monkeypatch.setenv("ROBENCH_FAST_COPY", "0")
    assert attack_model(lenet, x) is lenet


def test_the_search_runs_on_the_copy_and_the_verdict_on_the_model(lenet, images, monkeypatch):
    x, y = images[0][:30], images[1][:30]
    spec = load_specs()["pgd"]
    counted = CountingModel(lenet).eval()
    robust = fixed_eps_outcomes(spec, foolbox_model(counted, "cpu"), x, y, 0.15, seed=0).robust
    # clean predictions and the re-check of the returned points: a few passes over the 30 images; the
    # 40 PGD steps ran on the copy
    assert counted.examples <= 4 * len(y)
    assert attack_model(counted, x).net.examples >= 20 * len(y)
    assert 0 < robust.mean() < 1  # the attack broke some and not all: the comparison below means something
    monkeypatch.setenv("ROBENCH_FAST_COPY", "0")
    plain = fixed_eps_outcomes(spec, foolbox_model(lenet, "cpu"), x, y, 0.15, seed=0).robust
    # the same function with sums in another order: paths may part at a near-tie, verdicts agree
    assert (robust != plain).sum() <= 1
