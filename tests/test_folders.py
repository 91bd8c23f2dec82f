"""ImageNet-style folders (robench.folders via load_dataset "imagenet"), and models paired with them.

- a class-per-folder tree of PNGs of several sizes and modes loads as uint8 3 x 224 x 224, labels
  by sorted folder name, in ImageFolder's order, identically with and without worker processes;
- the crop is ImageNet's: short side to 256, center 224 (exact pixels where no resampling happens,
  PIL's own resize elsewhere);
- `subset` decodes a prefix; missing, empty and image-less folders and undecodable files are
  one-line RobenchErrors naming the folder and the expected layout;
- a torchvision architecture from a weights file gets the classifier size of its weights, and a
  model whose output count differs from the folder's class count is refused before evaluation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datadirs import write_image_folder
from robench.data import DATASETS, dataset_classes, load_dataset, to_unit_float
from robench.errors import RobenchError
from robench.folders import CROP, eval_transform
from robench.models import build_model
from robench.sources import ModelSource, check_classes, check_num_classes, from_weights

# created out of sorted order on purpose: labels follow sorted names (ant 0, cat 1, dog 2)
TREE = {
    "dog": [(300, 260, "RGB"), (240, 320, "RGB"), (224, 224, "L"), (256, 320, "RGBA")],
    "ant": [(256, 320, "RGB"), (300, 260, "RGB"), (320, 240, "RGB"), (500, 375, "RGB")],
    "cat": [(260, 300, "RGB"), (224, 300, "L"), (400, 256, "RGB"), (240, 240, "RGB")],
}
LAYOUT = "class-per-folder tree"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """(root, {png path: pixels}) with root/val holding 3 classes x 4 images."""
    root = tmp_path_factory.mktemp("imagenet")
    return root, write_image_folder(root / "val", TREE)


@pytest.fixture(scope="module")
def val(imagenet):
    root, _ = imagenet
    return load_dataset("imagenet", "test", root=root, num_workers=0)


def test_shapes_labels_and_order(imagenet, val):
    root, pixels = imagenet
    images, labels = val
    assert images.shape == (12, 3, CROP, CROP) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset_classes("imagenet", root=root) == (3, str(root / "val"))
    info = DATASETS["imagenet"]
    assert images.shape[1:] == (info.channels, info.size, info.size)
    # grayscale images become three equal channels (ImageFolder decodes to RGB)
    for gray in (images[5], images[10]):  # cat/01.png and dog/02.png, mode L
        assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(images[4][0], images[4][1])  # and colour stays colour


def test_center_crop_exact_without_resampling(imagenet, val):
    """A 256 x 320 image needs no resize: the crop is rows 48..271, columns 16..239 of the file."""
    root, pixels = imagenet
    images, _ = val
    original = pixels[root / "val" / "ant" / "00.png"]  # width 256, height 320
    assert original.shape == (320, 256, 3)
    assert torch.equal(images[0], torch.from_numpy(original[48:272, 16:240]).permute(2, 0, 1))
    rgba = pixels[root / "val" / "dog" / "03.png"]  # the same geometry, alpha dropped
    assert torch.equal(images[11], torch.from_numpy(rgba[48:272, 16:240, :3]).permute(2, 0, 1))


def test_center_crop_after_resize_matches_pil_and_torchvision(imagenet, val):
    """300 x 260: short side 260 -> 256 makes it 295 x 256; the 224 crop starts at row 16, column 36."""
    from torchvision.transforms import v2

    root, _ = imagenet
    images, _ = val
    path = root / "val" / "ant" / "01.png"
    with Image.open(path) as img:
        img = img.convert("RGB")
        resized = np.asarray(img.resize((295, 256), Image.BILINEAR))
        by_hand = torch.from_numpy(resized[16:240, 36:260].copy()).permute(2, 0, 1)
        manual = v2.PILToTensor()(v2.CenterCrop(224)(v2.Resize(256)(img)))
    assert torch.equal(images[1], by_hand)
    assert torch.equal(images[1], manual)
    assert torch.equal(eval_transform()(img), manual)


def test_pixels_stay_uint8_and_scale_to_unit(val):
    images, _ = val
    x = to_unit_float(images)
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    assert images.max().item() > 250 and images.min().item() < 5  # not normalized or rescaled


def test_subset_and_workers(imagenet, val):
    root, _ = imagenet
    images, labels = val
    sub_x, sub_y = load_dataset("imagenet", "test", root=root, subset=5, num_workers=2)
    assert torch.equal(sub_x, images[:5]) and torch.equal(sub_y, labels[:5])
    all_x, all_y = load_dataset("imagenet", "test", root=root, subset=100, num_workers=1)
    assert torch.equal(all_x, images) and torch.equal(all_y, labels)


def test_train_split_reads_train_folder(tmp_path):
    write_image_folder(tmp_path / "train", {"b": [(240, 240, "RGB")], "a": [(230, 250, "RGB")] * 2})
    images, labels = load_dataset("imagenet", "train", root=tmp_path, num_workers=0)
    assert images.shape == (3, 3, CROP, CROP) and labels.tolist() == [0, 0, 1]
    with pytest.raises(RobenchError, match="not found") as info:
        load_dataset("imagenet", "test", root=tmp_path)  # no val/ here
    assert str(tmp_path / "val") in str(info.value)


# --------------------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(RobenchError, match="not found") as info:
        load_dataset("imagenet", "test", root=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "val") in message and LAYOUT in message and "\n" not in message
    with pytest.raises(RobenchError, match="not found"):
        dataset_classes("imagenet", root=tmp_path / "nowhere")


def test_default_root_is_robench_data_imagenet(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    with pytest.raises(RobenchError) as info:
        load_dataset("imagenet", "test")
    assert str(tmp_path / "imagenet" / "val") in str(info.value)


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(RobenchError, match="has no class folders") as info:
        load_dataset("imagenet", "test", root=tmp_path)
    assert LAYOUT in str(info.value)
    (tmp_path / "val" / "cat").mkdir()
    (tmp_path / "val" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(RobenchError, match="holds no images") as info:
        load_dataset("imagenet", "test", root=tmp_path)
    assert str(tmp_path / "val") in str(info.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_image(tmp_path, workers):
    write_image_folder(tmp_path / "val", {"a": [(240, 240, "RGB")]})
    (tmp_path / "val" / "a" / "zz.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(RobenchError, match="cannot decode an image") as info:
        load_dataset("imagenet", "test", root=tmp_path, num_workers=workers)
    assert "zz.png" in str(info.value) and "\n" not in str(info.value)
    assert load_dataset("imagenet", "test", root=tmp_path, subset=1, num_workers=workers)[0].shape[0] == 1


def test_negative_workers(imagenet):
    with pytest.raises(RobenchError, match="num_workers"):
        load_dataset("imagenet", "test", root=imagenet[0], num_workers=-1)


# -------------------------------------------------------------------------- models and classes


def _save_resnet18(path, num_classes):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net


def test_check_num_classes_message():
    check_num_classes(10, 10, "mnist")
    with pytest.raises(RobenchError, match=r"^model has 1000 outputs but /d/val has 10 classes$"):
        check_num_classes(1000, 10, "/d/val")


def test_1000_class_model_vs_3_class_folder_is_refused(imagenet, tmp_path):
    root, _ = imagenet
    weights = tmp_path / "resnet18.safetensors"
    _save_resnet18(weights, 1000)
    source = from_weights("resnet18", weights, "imagenet")
    assert source.model.net.conv1.kernel_size == (7, 7)  # torchvision's ImageNet resnet18, not robench's CIFAR one
    with pytest.raises(RobenchError) as info:
        check_classes(source, root=root)
    assert str(info.value) == f"model resnet18:{weights} has 1000 outputs but {root / 'val'} has 3 classes"


def test_3_class_weights_fit_3_class_folder(imagenet, val, tmp_path):
    root, _ = imagenet
    weights = tmp_path / "resnet18-3.safetensors"
    reference = _save_resnet18(weights, 3).eval()
    source = from_weights("resnet18", weights, "imagenet")
    check_classes(source, root=root)
    images, _ = val
    x = to_unit_float(images[:2])
    mean = torch.tensor(DATASETS["imagenet"].mean).view(1, 3, 1, 1)
    std = torch.tensor(DATASETS["imagenet"].std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = source.model(x)
        torch.testing.assert_close(out, reference((x - mean) / std))  # ImageNet normalization inside
    assert out.shape == (2, 3)


def test_check_classes_on_fixed_datasets():
    torch.manual_seed(0)
    source = ModelSource(name="m", model=build_model("mlp", "mnist"), dataset="mnist", defense="none",
                         model_hash="0", meta={})  # fmt: skip
    check_classes(source)
    source.model.net[-1] = torch.nn.Linear(200, 7)
    with pytest.raises(RobenchError, match="model m has 7 outputs but mnist has 10 classes"):
        check_classes(source)
    assert source.model.training  # the probe left the mode as it was


# -------------------------------------------------------------------------- robench eval on a folder


def _eval_resnet18(imagenet, tmp_path, num_classes, *args):
    """`robench eval` of a torchvision resnet18 with `num_classes` outputs on the 3-class folder."""
    from click.testing import CliRunner

    from robench.cli import cli

    root, _ = imagenet
    weights = tmp_path / f"resnet18-{num_classes}.safetensors"
    _save_resnet18(weights, num_classes)
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(cli, ["eval", "--dataset", "imagenet", "--device", "cpu", "--quiet", "--arch", "resnet18",
                                      "--weights", str(weights), "--data-root", str(root), "--attack", "fgsm",
                                      "--out", str(out), *args])  # fmt: skip
    return result, weights, out


def test_eval_cli_refuses_mismatched_classes_in_one_line(imagenet, tmp_path):
    result, weights, out = _eval_resnet18(imagenet, tmp_path, 1000)
    assert result.exit_code == 1
    root, _ = imagenet
    assert result.output.strip() == f"Error: model resnet18:{weights} has 1000 outputs but {root / 'val'} has 3 classes"
    assert not out.exists()


def test_eval_cli_attacks_a_torchvision_model_on_a_folder(imagenet, tmp_path):
    import pandas as pd

    result, _, out = _eval_resnet18(imagenet, tmp_path, 3, "--n", "4", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    fgsm = rows[rows["attack"] == "fgsm"]
    assert sorted(fgsm["epsilon"]) == pytest.approx([0, 1 / 255, 2 / 255, 4 / 255, 8 / 255])  # imagenet grid
    assert (rows["n"] == 4).all() and (rows["dataset"] == "imagenet").all()
    assert fgsm["accuracy"].is_monotonic_decreasing


def test_torchvision_prefix_means_the_bare_name_on_a_folder(imagenet, tmp_path):
    """`--arch torchvision:resnet18` evaluates torchvision's ResNet-18 from its own state dict, with the
    same rows (model_hash) as the bare name it already meant on ImageNet folders."""
    import pandas as pd

    from click.testing import CliRunner

    from robench.cli import cli

    root, _ = imagenet
    weights = tmp_path / "resnet18-3.pth"
    torch.manual_seed(0)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    hashes = []
    for arch in ("torchvision:resnet18", "resnet18"):
        out = tmp_path / f"{arch.replace(':', '-')}.csv"
        result = CliRunner().invoke(cli, ["eval", "--dataset", "imagenet", "--device", "cpu", "--quiet", "--arch", arch,
                                          "--weights", str(weights), "--data-root", str(root), "--attack", "fgsm",
                                          "--eps", "0", "--n", "4", "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        rows = pd.read_csv(out, dtype={"model_hash": str})
        hashes.append(set(rows["model_hash"]))
    assert hashes[0] == hashes[1] and len(hashes[0]) == 1


def test_timm_prefix_evaluates_or_names_its_extra(imagenet, tmp_path):
    """With timm installed, `timm:resnet18` evaluates like torchvision's; without it, one line names the extra."""
    from click.testing import CliRunner

    from robench.cli import cli

    root, _ = imagenet
    weights = tmp_path / "timm.pth"
    try:
        import timm
    except ImportError:
        torch.save({"w": torch.zeros(1)}, weights)
        result = CliRunner().invoke(cli, ["eval", "--dataset", "imagenet", "--arch", "timm:resnet18", "--weights",
                                          str(weights), "--data-root", str(root), "--n", "2"])  # fmt: skip
        assert result.exit_code == 1 and result.output.strip() == (
            "Error: timm: models need the optional extra: pip install 'robench[timm]'")
        return
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict(), weights)
    out = tmp_path / "timm.csv"
    result = CliRunner().invoke(cli, ["eval", "--dataset", "imagenet", "--device", "cpu", "--quiet", "--arch",
                                      "timm:resnet18", "--weights", str(weights), "--data-root", str(root),
                                      "--attack", "fgsm", "--eps", "0", "--n", "4", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
