"""CIFAR-10 from disk (robench.cifar via load_dataset): guards that the pixels and labels are exactly
the batch files', that no batch file can run code, and that models and data agree.

- a small directory in the official format (Python 2 pickles, 5 x 20 train + 30 test images) loads
  pixel-exact, channel-major, in file order, and exactly as torchvision's own reader sees it;
- `subset` is a prefix; Python 3 re-exports (bytes keys, protocol 5) load too;
- a batch naming any global outside numpy's array machinery is refused before the payload runs;
- a missing directory or batch file, a truncated file and wrong contents are one-line RobenchErrors
  that name the file and the expected layout;
- build_model("resnet18", "cifar10") takes the loaded images and has one output per class.
"""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from datadirs import CIFAR_FOLDER, py2_pickle, write_cifar10
from robench.data import dataset_classes, dataset_info, load_dataset, to_unit_float
from robench.errors import RobenchError
from robench.models import build_model


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """(root, {batch file: (uint8 N x 3072 rows, labels)}) of a 100 + 30 image directory."""
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root)


def expected(batches, names):
    rows = np.concatenate([batches[n][0] for n in names])
    return rows, sum((batches[n][1] for n in names), [])


# ------------------------------------------------------------------------------------- loading


def test_train_split_is_the_five_batches_in_order(cifar):
    root, batches = cifar
    images, labels = load_dataset("cifar10", "train", root=root)
    rows, want = expected(batches, [f"data_batch_{i}" for i in range(1, 6)])
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8 and images.is_contiguous()
    assert labels.shape == (100,) and labels.dtype == torch.int64
    assert labels.tolist() == want
    # a CIFAR-10 row is 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32
    assert torch.equal(images.reshape(100, -1), torch.from_numpy(rows))
    k, c, h, w = 57, 1, 5, 30
    assert images[k, c, h, w].item() == rows[k, c * 1024 + h * 32 + w]
    assert images[20, 2, 31, 0].item() == batches["data_batch_2"][0][0, 2 * 1024 + 31 * 32]


def test_test_split_and_subset(cifar):
    root, batches = cifar
    images, labels = load_dataset("cifar10", "test", root=root)
    assert images.shape == (30, 3, 32, 32)
    assert labels.tolist() == batches["test_batch"][1]
    assert torch.equal(images.reshape(30, -1), torch.from_numpy(batches["test_batch"][0]))
    sub_x, sub_y = load_dataset("cifar10", "test", root=root, subset=7)
    assert torch.equal(sub_x, images[:7]) and torch.equal(sub_y, labels[:7])
    assert len(load_dataset("cifar10", "test", root=root, subset=1000)[1]) == 30


def test_agrees_with_torchvision_reader(cifar, monkeypatch):
    """torchvision's own CIFAR10 (MD5 check switched off for our self-made files) reads the same."""
    import torchvision.datasets.cifar as tv_cifar

    root, _ = cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    for split in ("train", "test"):
        theirs = tv_cifar.CIFAR10(str(root), train=split == "train", download=False)
        images, labels = load_dataset("cifar10", split, root=root)
        assert torch.equal(images, torch.from_numpy(theirs.data).permute(0, 3, 1, 2))
        assert labels.tolist() == theirs.targets


def test_python3_reexport_loads(tmp_path):
    batches = write_cifar10(tmp_path, per_batch=3, test=4, seed=1, style="py3")
    images, labels = load_dataset("cifar10", "test", root=tmp_path)
    assert labels.tolist() == batches["test_batch"][1]
    assert torch.equal(images.reshape(4, -1), torch.from_numpy(batches["test_batch"][0]))
    assert load_dataset("cifar10", "train", root=tmp_path)[0].shape == (15, 3, 32, 32)


def test_protocol_2_bytes_keys_load(tmp_path):
    """Python 3 pickles bytes under protocol 2 as _codecs.encode(text, "latin1"), which is allowed."""
    write_cifar10(tmp_path, per_batch=2, test=2)
    data = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": data, b"labels": np.array([3, 9])}, protocol=2)
    (tmp_path / CIFAR_FOLDER / "test_batch").write_bytes(blob)
    images, labels = load_dataset("cifar10", "test", root=tmp_path)
    assert labels.tolist() == [3, 9] and torch.equal(images.reshape(2, -1), torch.from_numpy(data))


# --------------------------------------------------------------------------------------- safety


class _System:
    """Unpickling this runs a shell command that creates `marker`."""

    refused = f"{os.system.__module__}.system"  # posix.system

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Open:
    """Unpickling this creates (opens for writing) `marker`."""

    refused = "io.open"  # how pickle names the builtin open

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_System, _Open])
def test_payload_sanity(tmp_path, payload):
    """The payloads really run when unpickled normally, so their absence below means something."""
    marker = tmp_path / "ran"
    result = pickle.loads(pickle.dumps({b"data": payload(marker)}))
    if hasattr(result[b"data"], "close"):
        result[b"data"].close()
    assert marker.exists()


@pytest.mark.parametrize("payload", [_System, _Open])
@pytest.mark.parametrize("where", ["whole", "labels"])
def test_malicious_batch_is_refused_and_never_runs(tmp_path, payload, where):
    write_cifar10(tmp_path, per_batch=2, test=2)
    marker = tmp_path / "payload-ran"
    if where == "whole":
        evil = payload(marker)
    else:  # a valid image array, with the payload hidden in the labels
        evil = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, payload(marker)]}
    target = tmp_path / CIFAR_FOLDER / "data_batch_4"
    target.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(RobenchError, match="refusing to unpickle CIFAR-10 batch") as info:
        load_dataset("cifar10", "train", root=tmp_path)
    message = str(info.value)
    assert str(target) in message
    assert f"it names {payload.refused}" in message
    assert "\n" not in message
    assert not marker.exists()


def test_codec_other_than_latin1_is_refused(tmp_path):
    write_cifar10(tmp_path, per_batch=2, test=2)
    blob = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / CIFAR_FOLDER / "test_batch").write_bytes(blob)
    with pytest.raises(RobenchError, match="refusing to unpickle"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_official_style_fake_files_are_refused(tmp_path):
    """Every file named like CIFAR-10's but holding a payload: refused, nothing created."""
    marker = tmp_path / "payload-ran"
    folder = tmp_path / CIFAR_FOLDER
    folder.mkdir()
    for name in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps(_Open(marker)))
    for split in ("train", "test"):
        with pytest.raises(RobenchError, match="CIFAR-10"):
            load_dataset("cifar10", split, root=tmp_path)
    assert not marker.exists()
    shutil.rmtree(folder)


# --------------------------------------------------------------------------------------- errors


LAYOUT = "cifar-10-batches-py/data_batch_1..5, test_batch"


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_directory(tmp_path, split):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(RobenchError, match="CIFAR-10 not found") as info:
        load_dataset("cifar10", split, root=missing)
    assert str(missing / CIFAR_FOLDER) in str(info.value) and LAYOUT in str(info.value)
    assert not missing.exists()  # nothing was downloaded or created
    with pytest.raises(RobenchError, match="CIFAR-10 not found"):
        load_dataset("cifar10", split, root=tmp_path)  # exists but empty


def test_root_defaults_to_robench_data(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    with pytest.raises(RobenchError) as info:
        load_dataset("cifar10", "test")
    assert str(tmp_path / CIFAR_FOLDER) in str(info.value)
    write_cifar10(tmp_path, per_batch=1, test=3)
    assert load_dataset("cifar10", "test")[0].shape == (3, 3, 32, 32)


def test_missing_batch_file_is_named(tmp_path):
    write_cifar10(tmp_path, per_batch=2, test=2)
    gone = tmp_path / CIFAR_FOLDER / "data_batch_3"
    gone.unlink()
    assert load_dataset("cifar10", "test", root=tmp_path)[0].shape == (2, 3, 32, 32)  # test needs only test_batch
    with pytest.raises(RobenchError, match="CIFAR-10 not found") as info:
        load_dataset("cifar10", "train", root=tmp_path)
    assert f"{gone} is missing" in str(info.value) and LAYOUT in str(info.value)


def test_truncated_batch_is_corrupt(tmp_path):
    write_cifar10(tmp_path, per_batch=2, test=2)
    path = tmp_path / CIFAR_FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(RobenchError, match="is corrupt") as info:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(path) in str(info.value) and LAYOUT in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(RobenchError, match="is corrupt"):
        load_dataset("cifar10", "test", root=tmp_path)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({"data": np.zeros((2, 3072), np.uint8)}, "'labels' must be a list of integers"),
        ({"labels": [0, 1]}, "'data' must be a uint8 N x 3072 array"),
        ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, "uint8 N x 3072"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8 N x 3072"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but 1 labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "labels must lie in 0..9"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, "cat"]}, "list of integers"),
        ([1, 2, 3], "not a CIFAR-10 batch"),
    ],
)
def test_wrong_contents(tmp_path, content, fragment):
    write_cifar10(tmp_path, per_batch=2, test=2)
    path = tmp_path / CIFAR_FOLDER / "test_batch"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(RobenchError, match="is not a CIFAR-10 batch") as info:
        load_dataset("cifar10", "test", root=tmp_path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_python2_pickle_helper_round_trips():
    """The test files' encoder writes what pickle reads back as the official batches read."""
    data = np.arange(3 * 3072).astype(np.uint8).reshape(3, 3072)
    back = pickle.loads(py2_pickle({"data": data, "labels": [1, 2, 300], "name": "x" * 300}), encoding="latin1")
    assert np.array_equal(back["data"], data) and back["labels"] == [1, 2, 300] and back["name"] == "x" * 300


# ------------------------------------------------------------------------------ model <-> data


def test_resnet18_fits_cifar10_data(cifar):
    root, _ = cifar
    images, labels = load_dataset("cifar10", "test", root=root, subset=4)
    info = dataset_info("cifar10")
    assert images.shape[1:] == (info.channels, info.size, info.size)
    assert dataset_classes("cifar10", root=root) == (info.num_classes, "cifar10")
    assert int(labels.max()) < info.num_classes
    torch.manual_seed(0)
    model = build_model("resnet18", "cifar10").eval()
    with torch.no_grad():
        out = model(to_unit_float(images))
    assert out.shape == (4, info.num_classes) and torch.isfinite(out).all()
    # the loss the trainer uses is defined on these labels
    assert torch.isfinite(torch.nn.functional.cross_entropy(out, labels))


def test_resnet18_trains_one_jr_epoch_on_a_cifar10_directory(cifar, tmp_path):
    """The documented CIFAR-10 recipe's model, end to end: train (JR through BatchNorm), checkpoint, reload."""
    from robench.checkpoint import load
    from robench.train import TrainConfig, train

    root, _ = cifar
    config = TrainConfig(model="resnet18", dataset="cifar10", data_root=str(root), jr=0.01, l2=5e-4, epochs=1,
                         batch_size=20, train_subset=40, test_subset=10, lr=0.01, norm_samples=4, device="cpu")  # fmt: skip
    meta = train(config, tmp_path / "run", show_progress=False)
    assert meta["finished"] and meta["test_examples"] == 10
    assert 0.0 <= meta["metrics"]["test_accuracy"] <= 1.0 and meta["metrics"]["test_jacobian_norm"] > 0
    model, _ = load(tmp_path / "run")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
