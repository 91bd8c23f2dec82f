"""Shared fixtures: a few thousand real MNIST images and a small model trained on them in seconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports git at import time

from robench.data import load_dataset  # noqa: E402
from robench.train import TrainConfig, train  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def mnist_train_small():
    """The first 3,000 real MNIST training images (uint8 N x 1 x 28 x 28) and labels."""
    return load_dataset("mnist", "train", subset=3000)


@pytest.fixture(scope="session")
def mnist_test_small():
    """The first 500 real MNIST test images and labels."""
    return load_dataset("mnist", "test", subset=500)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small MLP trained on 3,000 real MNIST images for 3 epochs (a few seconds on CPU).

    Returns the run directory; `robench.checkpoint.load(run_dir)` rebuilds the model.
    """
    run_dir = tmp_path_factory.mktemp("runs") / "mlp-plain"
    config = TrainConfig(
        model="mlp", epochs=3, lr=0.05, train_subset=3000, test_subset=500, norm_samples=100,
        device="cpu", seed=0,
    )  # fmt: skip
    train(config, run_dir, show_progress=False)
    return run_dir


@pytest.fixture(scope="session")
def trained_model(trained_run):
    """(model in eval mode, meta) of `trained_run`."""
    from robench.checkpoint import load

    return load(trained_run)


@pytest.fixture(scope="session")
def jr_lenet(tmp_path_factory):
    """LeNet' with JR (lambda 0.01), 2 epochs on 4,000 real MNIST images: trained once per test run."""
    run = tmp_path_factory.mktemp("aa") / "lenet-jr"
    config = TrainConfig(model="lenet", jr=0.01, epochs=2, lr=0.05, train_subset=4000, test_subset=200,
                         norm_samples=50, device="cpu")  # fmt: skip
    train(config, run, show_progress=False)
    return run
