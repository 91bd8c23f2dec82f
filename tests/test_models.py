"""Model registry (robench.models): guards the architectures PAPER.md describes and the contract
every tool relies on: a model takes pixels in [0, 1], normalizes them itself (so attack epsilons are
in pixel units) and returns B x 10 logits; its state dict holds only "net." keys; bad names and
dropout rates raise RobenchError; xavier_init_ is Glorot-uniform with zero biases.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robench.data import DATASETS, to_unit_float
from robench.errors import RobenchError
from robench.models import MODELS, Normalize, build_model, xavier_init_

DROPOUT_LAYERS = {"lenet": 1, "lenet5": 2, "mlp": 2, "resnet18": 1}


@pytest.fixture(scope="module")
def mnist_batch(mnist_test_small):
    images, labels = mnist_test_small
    return to_unit_float(images[:4]), labels[:4]


def weight_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")]


def bias_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for n, p in model.named_parameters() if n.endswith("bias")]


def test_registry_is_complete():
    assert set(MODELS) == set(DROPOUT_LAYERS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_mnist_images_to_logits(name, mnist_batch):
    x, _ = mnist_batch
    if name == "resnet18":
        x = x[:2]
    torch.manual_seed(0)
    model = build_model(name, "mnist").eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (len(x), 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # different images give different logits (the input is actually used)
    assert not torch.allclose(out[0], out[1])


def test_resnet18_for_cifar10():
    torch.manual_seed(0)
    model = build_model("resnet18", "cifar10").eval()
    net = model.net
    # the CIFAR form: 3x3 stride-1 stem on 3 channels, no max-pool, dropout then fc 512 -> 10
    assert net.conv1.weight.shape == (64, 3, 3, 3)
    assert net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc[0], nn.Dropout) and isinstance(net.fc[1], nn.Linear)
    assert net.fc[1].weight.shape == (10, 512)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    norm = model[0]
    assert isinstance(norm, Normalize)
    torch.testing.assert_close(norm.mean.flatten(), torch.tensor(DATASETS["cifar10"].mean))
    torch.testing.assert_close(norm.std.flatten(), torch.tensor(DATASETS["cifar10"].std))


def test_resnet18_mnist_stem_takes_one_channel():
    model = build_model("resnet18", "mnist")
    assert model.net.conv1.weight.shape == (64, 1, 3, 3)


def test_lenet_layers_match_paper():
    """conv 32@5x5 - pool - conv 64@5x5 - pool - fc 1024 - fc 10 (PAPER.md, LeNet')."""
    model = build_model("lenet", "mnist")
    assert weight_shapes(model) == [(32, 1, 5, 5), (64, 32, 5, 5), (1024, 64 * 7 * 7), (10, 1024)]
    assert bias_shapes(model) == [(32,), (64,), (1024,), (10,)]
    kinds = [type(m) for m in model.net]
    assert kinds.count(nn.ReLU) == 3 and kinds.count(nn.MaxPool2d) == 2
    assert sum(p.numel() for p in model.parameters()) == 3_274_634

    cifar = build_model("lenet", "cifar10")
    assert weight_shapes(cifar) == [(32, 3, 5, 5), (64, 32, 5, 5), (1024, 64 * 8 * 8), (10, 1024)]
    with torch.no_grad():
        assert cifar.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_lenet5_layers_match_paper():
    """conv 6@5x5 - pool - conv 16@5x5 - pool - FC 400-120-84-10 with tanh."""
    model = build_model("lenet5", "mnist")
    assert weight_shapes(model) == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    kinds = [type(m) for m in model.net]
    assert kinds.count(nn.Tanh) == 4 and nn.ReLU not in kinds


def test_mlp_layers():
    """The reference code's 784-200-200-10 ReLU network."""
    model = build_model("mlp", "mnist")
    assert weight_shapes(model) == [(200, 784), (200, 200), (10, 200)]


def test_normalization_is_inside_the_model(mnist_batch):
    x, _ = mnist_batch
    torch.manual_seed(0)
    model = build_model("lenet", "mnist").eval()
    first = model[0]
    assert isinstance(first, Normalize)
    assert first.mean.flatten().tolist() == pytest.approx([0.1307])
    assert first.std.flatten().tolist() == pytest.approx([0.3081])
    with torch.no_grad():
        out = model(x)
        # the network behind Normalize sees standardized pixels
        torch.testing.assert_close(out, model.net((x - 0.1307) / 0.3081))
        # feeding already-normalized input or raw 0..255 pixels would give different logits
        assert not torch.allclose(out, model.net(x), atol=1e-3)
    normalized = first(x)
    # real MNIST in [0, 1] becomes roughly zero-mean, unit-variance
    assert abs(normalized.mean().item()) < 0.2
    assert 0.7 < normalized.std().item() < 1.3
    assert normalized.min().item() == pytest.approx(-0.1307 / 0.3081)


def test_input_gradient_flows_through_normalization(mnist_batch):
    x, _ = mnist_batch
    model = build_model("mlp", "mnist").eval()
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_keys(name):
    model = build_model(name, "mnist")
    keys = list(model.state_dict())
    assert keys
    assert all(k.startswith("net.") for k in keys), [k for k in keys if not k.startswith("net.")]
    # and the network alone loads them back (normalization buffers are not persisted)
    fresh = build_model(name, "mnist")
    fresh.load_state_dict(model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_rate_is_applied(name):
    model = build_model(name, "mnist", dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == DROPOUT_LAYERS[name]
    assert all(d.p == 0.5 for d in drops)
    assert all(d.p == 0.0 for d in build_model(name, "mnist").modules() if isinstance(d, nn.Dropout))


def test_dropout_active_only_in_training(mnist_batch):
    x, _ = mnist_batch
    torch.manual_seed(0)
    model = build_model("mlp", "mnist", dropout=0.5)
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
        plain = build_model("mlp", "mnist").train()
        assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize(
    "args, kwargs, fragment",
    [
        (("vgg16", "mnist"), {}, "unknown model 'vgg16'"),
        (("LeNet", "mnist"), {}, "unknown model"),
        (("lenet", "svhn"), {}, "unknown dataset"),
        (("lenet", "mnist"), {"dropout": 1.0}, "dropout"),
        (("lenet", "mnist"), {"dropout": -0.1}, "dropout"),
        (("mlp", "mnist"), {"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_arguments_raise(args, kwargs, fragment):
    with pytest.raises(RobenchError, match=fragment):
        build_model(*args, **kwargs)


def test_unknown_model_message_lists_choices():
    with pytest.raises(RobenchError) as info:
        build_model("vgg16", "mnist")
    for name in MODELS:
        assert name in str(info.value)


def test_dropout_just_below_one_is_accepted():
    model = build_model("lenet", "mnist", dropout=0.99)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.99]


@pytest.mark.parametrize("name", ["lenet", "lenet5", "mlp"])
def test_xavier_init(name):
    torch.manual_seed(0)
    model = build_model(name, "mnist")
    assert xavier_init_(model) is model
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach()
            fan_in = w.shape[1] * w[0, 0].numel()
            fan_out = w.shape[0] * w[0, 0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max().item() <= bound
            assert w.abs().max().item() > 0.9 * bound  # uniform fills [-bound, bound]
            if w.numel() >= 1000:  # Glorot-uniform std is bound / sqrt(3)
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert module.bias is not None and torch.count_nonzero(module.bias) == 0


def test_xavier_init_resnet_leaves_batchnorm():
    torch.manual_seed(0)
    model = xavier_init_(build_model("resnet18", "mnist"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    conv1 = model.net.conv1.weight
    bound = math.sqrt(6.0 / (1 * 9 + 64 * 9))
    assert conv1.abs().max().item() <= bound
