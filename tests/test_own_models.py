"""Bring your own model: `robench.evaluate_model` from Python, and --arch/--normalize/--num-classes."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import robench
from robench.cli import cli
from robench.errors import RobenchError
from robench.sources import from_weights, parse_arch, parse_normalize


def test_evaluate_model_returns_rows_and_new_ones_after_the_weights_change(trained_model, tmp_path):
    """Rows are keyed by a hash of the weights themselves: an untrained copy of a trained model gets
    its own rows and its own (chance-level) accuracy, never the trained model's."""
    model, _ = trained_model
    out = tmp_path / "py.csv"
    trained = robench.evaluate_model(model, dataset="mnist", attacks="fgsm", eps=[0.0, 0.1], n=100, out=out,
                                     device="cpu")  # fmt: skip
    assert set(trained["attack"]) >= {"fgsm", "jacobian_norm"} and (trained["n"] == 100).all()
    again = robench.evaluate_model(model, dataset="mnist", attacks="fgsm", eps=[0.0, 0.1], n=100, out=out,
                                   device="cpu")  # fmt: skip
    assert set(again["model_hash"]) == set(trained["model_hash"]) and len(again) == len(trained)  # reused
    untrained = copy.deepcopy(model)
    with torch.no_grad():
        for p in untrained.parameters():
            p.normal_(0, 0.01)
    fresh = robench.evaluate_model(untrained, dataset="mnist", attacks="fgsm", eps=[0.0, 0.1], n=100, out=out,
                                   device="cpu")  # fmt: skip
    assert set(fresh["model_hash"]).isdisjoint(trained["model_hash"])
    clean = lambda df: float(df[(df["attack"] == "fgsm") & (df["epsilon"] == 0)]["accuracy"].iloc[0])  # noqa: E731
    assert clean(trained) > 0.7 and clean(fresh) < 0.4
    assert len(pd.read_csv(out)) == len(trained) + len(fresh)


def test_evaluate_model_refuses_what_is_not_a_module():
    with pytest.raises(RobenchError, match="takes a torch.nn.Module"):
        robench.evaluate_model("runs/x", dataset="mnist")


def test_arch_prefixes_and_the_bare_name():
    assert parse_arch("mlp", "mnist") == ("robench", "mlp")
    assert parse_arch("resnet18", "cifar10") == ("robench", "resnet18")  # today's meaning, kept
    assert parse_arch("resnet18", "imagenet") == ("torchvision", "resnet18")
    assert parse_arch("torchvision:resnet18", "cifar10") == ("torchvision", "resnet18")
    assert parse_arch("timm:vit_tiny_patch16_224", "imagenet") == ("timm", "vit_tiny_patch16_224")
    for bad, message in (("keras:x", "write NAME or one of"), ("robench:bogus", "unknown robench model"),
                         ("robench:mlp", "not imagenet")):  # fmt: skip
        with pytest.raises(RobenchError, match=message):
            parse_arch(bad, "imagenet" if bad == "robench:mlp" else "mnist")


def test_normalize_option():
    assert parse_normalize("dataset", "mnist") == ((0.1307,), (0.3081,))
    assert parse_normalize("none", "mnist") is None
    assert parse_normalize("0.5,0.25", "mnist") == ((0.5,), (0.25,))
    assert parse_normalize("0.4,0.4,0.4,0.2,0.2,0.2", "cifar10") == ((0.4,) * 3, (0.2,) * 3)
    for bad in ("0.5", "a,b", "0.5,0", "0.5,inf"):
        with pytest.raises(RobenchError, match="--normalize"):
            parse_normalize(bad, "mnist")


def test_normalize_none_takes_pixels_and_is_another_model(trained_run, tmp_path):
    """The same weights with and without the dataset normalization are two models: two hashes; without
    a Normalize layer there is no normalized-units ||J|| row."""
    from robench.checkpoint import read_weights

    state, _ = read_weights(trained_run)
    weights = tmp_path / "w.safetensors"
    save_file(state, weights)
    with_norm = from_weights("mlp", weights, "mnist")
    explicit = from_weights("robench:mlp", weights, "mnist")
    without = from_weights("mlp", weights, "mnist", normalize="none")
    assert with_norm.model_hash == explicit.model_hash != without.model_hash
    x = torch.rand(4, 1, 28, 28)
    net = with_norm.model.net
    assert torch.allclose(without.model(x), net(x)) and not torch.allclose(with_norm.model(x), net(x))
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(cli, ["eval", "--arch", "mlp", "--weights", str(weights), "--normalize", "none",
                                      "--attack", "fgsm", "--eps", "0", "--n", "50", "--device", "cpu", "--quiet",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "jacobian_norm_normalized" not in set(pd.read_csv(out)["attack"])


def test_num_classes_where_the_weights_do_not_tell(tmp_path):
    import torchvision

    weights = tmp_path / "r.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    source = from_weights("torchvision:resnet18", weights, "cifar10", num_classes=10)
    assert source.model.net.fc.out_features == 10
    with pytest.raises(RobenchError, match="--num-classes must be a positive integer"):
        from_weights("torchvision:resnet18", weights, "cifar10", num_classes=0)


@pytest.mark.parametrize("jacobian_n, rows_n", [(0, None), (20, 20)])
def test_jacobian_n_skips_or_subsets_the_exact_norm_rows(trained_run, tmp_path, jacobian_n, rows_n):
    out = tmp_path / "r.csv"
    args = ["eval", str(trained_run), "--attack", "fgsm", "--eps", "0,0.1", "--n", "50", "--device", "cpu", "--quiet",
            "--jacobian-n", str(jacobian_n), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    jac = rows[rows["attack"].str.startswith("jacobian_norm")]
    assert (len(jac) == 0) if rows_n is None else (set(jac["n"]) == {rows_n} and len(jac) == 2)
    assert (rows[rows["attack"] == "fgsm"]["n"] == 50).all()
    again = CliRunner().invoke(cli, args)  # a rerun finds everything done
    assert again.exit_code == 0 and len(pd.read_csv(out)) == len(rows)
    bad = CliRunner().invoke(cli, args[:-4] + ["--jacobian-n", "-1", "--out", str(out)])
    assert bad.exit_code == 1 and "--jacobian-n must be >= 0" in bad.output
