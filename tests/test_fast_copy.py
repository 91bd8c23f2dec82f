"""The attacks search with a channels_last copy of a convolutional model on a CPU (`robench.attacks.fast_copy`):
the same function, made once per state of the weights, never used for a verdict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robench.attacks import foolbox_model, load_specs
from robench.attacks.fast_copy import attack_model
from robench.attacks.runners import fixed_eps_outcomes
from robench.checkpoint import load
from robench.data import to_unit_float


class Counting(nn.Module):
    """`net`, counting the images its forward pass sees (a deepcopy counts on its own)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x):
        self.images += len(x)
        return self.net(x)


@pytest.fixture(scope="module")
def lenet(jr_lenet):
    return load(jr_lenet)[0].eval()


@pytest.fixture(scope="module")
def images(mnist_test_small):
    x, y = mnist_test_small
    return to_unit_float(x[:100]), y[:100]


def test_a_conv_model_gets_one_channels_last_copy_computing_the_same_logits(lenet, images):
    x, _ = images
    fast = attack_model(lenet)
    assert fast is not lenet and attack_model(lenet) is fast  # made once, then reused
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.requires_grad
    with torch.no_grad():
        reference, copied = lenet(x), fast(x)
    assert (copied - reference).abs().max() < 1e-4
    assert torch.equal(copied.argmax(1), reference.argmax(1))


def test_the_copy_follows_weights_changed_in_place(jr_lenet, images):
    model = load(jr_lenet)[0].eval()
    first = attack_model(model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias.add_(torch.arange(10.0))  # in place: the version counter moves, the storage does not
        expected = model(images[0])
    second = attack_model(model)
    assert second is not first
    with torch.no_grad():
        assert (second(images[0]) - expected).abs().max() < 1e-4


def test_no_copy_where_it_cannot_help_or_would_change_the_model(lenet, trained_model, monkeypatch):
    mlp, _ = trained_model
    assert attack_model(mlp) is mlp  # no convolution
    assert attack_model(lenet, votes=20) is lenet  # randomized: a copy would draw its own randomness
    lenet.train()
    try:
        assert attack_model(lenet) is lenet  # training mode: dropout and batch norm would differ
    finally:
        lenet.eval()
    monkeypatch.setenv("ROBENCH_FAST_COPY", "0")
    assert attack_model(lenet) is lenet


def test_the_search_runs_on_the_copy_and_the_verdict_on_the_model(lenet, images, monkeypatch):
    x, y = images[0][:30], images[1][:30]
    spec = load_specs()["pgd"]
    counted = Counting(lenet).eval()
    robust = fixed_eps_outcomes(spec, foolbox_model(counted, "cpu"), x, y, 0.15, seed=0).robust
    # clean predictions and the re-check of the returned points: a few passes over the 30 images; the
    # 40 PGD steps ran on the copy
    assert counted.images <= 4 * len(y)
    assert attack_model(counted).net.images >= 20 * len(y)
    assert 0 < robust.mean() < 1  # the attack broke some and not all: the comparison below means something
    monkeypatch.setenv("ROBENCH_FAST_COPY", "0")
    plain = fixed_eps_outcomes(spec, foolbox_model(lenet, "cpu"), x, y, 0.15, seed=0).robust
    # the same function with sums in another order: paths may part at a near-tie, verdicts agree
    assert (robust != plain).sum() <= 1
