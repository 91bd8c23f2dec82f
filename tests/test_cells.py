"""Decision cells: the grid's centre is the image, its off-centre points are the model's predictions
there, the boundary distance is the brute-force one, and `robench cells` writes a PNG."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robench.cells import PLANES, decision_cells
from robench.cli import cli
from robench.data import to_unit_float
from robench.models import build_model, xavier_init_

R = 21  # odd: the image is grid point (R // 2, R // 2)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def image(mnist_test_small):
    return to_unit_float(mnist_test_small[0][0])


@pytest.fixture(scope="module")
def untrained():
    """A second, different model (random weights) so panels can disagree."""
    torch.manual_seed(5)
    return xavier_init_(build_model("mlp", "mnist")).eval()


def brute_force_distance(grid: torch.Tensor, coords: torch.Tensor) -> float:
    centre, best = grid[R // 2, R // 2], math.inf
    for i in range(R):
        for j in range(R):
            if grid[i, j] != centre:
                best = min(best, math.hypot(coords[i].item(), coords[j].item()))
    return best


@pytest.mark.parametrize("plane", PLANES)
def test_grid_is_the_models_predictions_on_the_plane(plane, trained_model, untrained, image):
    model, _ = trained_model
    result = decision_cells([model, untrained], image, plane=plane, span=10.0, resolution=R, seed=3)
    coords, u, v = result["coords"], result["u"], result["v"]
    assert coords[R // 2] == 0 and coords[0] == pytest.approx(-10) and coords[-1] == pytest.approx(10)
    assert u.norm().item() == pytest.approx(1) and v.norm().item() == pytest.approx(1)
    assert abs((u * v).sum().item()) < 1e-10
    with torch.no_grad():
        for net, grid, distance in zip([model, untrained], result["grids"], result["distances"]):
            assert grid.shape == (R, R) and grid.dtype == torch.int64
            assert grid[R // 2, R // 2] == net(image[None]).argmax(1).item()
            for i, j in [(3, 15), (17, 2), (0, 20)]:  # orientation: grid[i, j] is at coords[i] u + coords[j] v
                point = (image.double() + coords[i] * u + coords[j] * v).float()
                assert grid[i, j] == net(point[None]).argmax(1).item()
            assert 0 < distance == pytest.approx(brute_force_distance(grid, coords))
    assert not torch.equal(result["grids"][0], result["grids"][1])


def test_adversarial_plane_starts_along_fgsm_and_finds_a_nearer_boundary(trained_model, image):
    model, _ = trained_model
    x = image[None].clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), x)
    expected = grad[0].sign().double()
    adversarial = decision_cells([model], image, plane="adversarial", span=10.0, resolution=R, seed=0)
    assert torch.allclose(adversarial["u"], expected / expected.norm())
    random = decision_cells([model], image, plane="random", span=10.0, resolution=R, seed=0)
    assert adversarial["distances"][0] < random["distances"][0]
    again = decision_cells([model], image, plane="random", span=10.0, resolution=R, seed=0)
    assert torch.equal(again["u"], random["u"]) and torch.equal(again["grids"][0], random["grids"][0])


def test_cells_cli_writes_a_png_with_one_panel_per_model(tmp_path, trained_run):
    import matplotlib.image

    out = tmp_path / "figs" / "cells.png"
    result = invoke("cells", trained_run, trained_run, "--out", out, "--resolution", R, "--plane", "adversarial")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height > 0  # two panels side by side
    assert result.output.count("nearest other class at L2 distance") == 2
    assert not list(out.parent.glob(".*.tmp"))


def test_cells_cli_errors_are_one_line(tmp_path, trained_run):
    cases = [
        ([trained_run, "--out", tmp_path / "c.png", "--resolution", 20], "odd"),
        ([tmp_path / "nope", "--out", tmp_path / "c.png", "--resolution", R], "no checkpoint"),
        ([trained_run, "--out", tmp_path / "c.txt", "--resolution", R], ".png"),
        ([trained_run, "--out", tmp_path / "c.png", "--span", -1], "--span"),
    ]
    for args, message in cases:
        result = invoke("cells", *args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, result.output)
    assert not (tmp_path / "c.png").exists()


def test_class_colours_have_no_grey_and_the_true_class_is_marked(trained_model, image):
    """Every class has a saturated hue of its own (tab10's grey used to make one class look like
    'no class'), the legend marks the true class, and a colour bar gives the confidence scale."""
    import colorsys

    import numpy as np

    from robench.plots import cells_figure, class_colors

    colors = class_colors(10)
    saturation = [colorsys.rgb_to_hsv(*c)[1] for c in colors]
    assert min(saturation) > 0.3 and len({tuple(np.round(c, 3)) for c in colors}) == 10
    model, _ = trained_model
    result = decision_cells([model.eval()], image, plane="random", span=5.0, resolution=5, seed=0)
    result["label"] = 7
    fig = cells_figure(result, ["m"], "t")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "7 (true)" in legend and "3" in legend
    assert len(fig.axes) == 2 and "confidence" in fig.axes[1].get_ylabel()
