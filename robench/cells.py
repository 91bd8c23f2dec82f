"""Decision cells (the paper's Figure 1 / S1 / S2): what each model predicts on a plane through an image.

Take a test image x and two orthonormal directions u, v of input space; classify every point
x + a*u + b*v for a, b on an R x R grid in [-span, span]. Because u and v are orthonormal, the point
(a, b) lies at L2 distance sqrt(a^2 + b^2) from x, so the picture's distances are input-space
distances. The radius reported per model is the distance from x to the nearest grid point whose
predicted class differs from x's: an upper bound on the distance to the decision boundary within the
plane, exact up to the grid step (2 * span / (R - 1)).

The points are NOT clamped to [0, 1]. The figure shows the geometry of the function the network
computes, as in the paper: clamping would fold the plane onto the faces of the pixel cube, so many
grid points would become the same input, straight lines in the plane would bend, and the circle's
radius would stop being an L2 distance. The price: with span above the norm of a digit (about 9 on
MNIST), most of the plane is not a valid image, which is why this is a picture of cells rather than
an attack (the attacks in `robench eval` do clip to [0, 1]).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import to_unit_float
from .errors import RobenchError
from .settings import PLANES, CellsConfig  # noqa: F401 - public here too

def grid_coords(span: float, resolution: int) -> torch.Tensor:
    """R coordinates in [-span, span] whose middle one is exactly 0 (so the centre is the image)."""
    half = resolution // 2
    return torch.arange(-half, half + 1, dtype=torch.float64) * (span / half)


def plane_directions(model: nn.Module, image: torch.Tensor, *, plane: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal float64 directions shaped like `image` (Gram-Schmidt on seeded Gaussians).

    For "adversarial", u is FGSM's direction sign(grad_x CE(model(x), model's own prediction)),
    normalized: the prediction rather than the true label, so the plane is defined for any image
    and points where the model's decision is most fragile to an L-infinity step.
    """
    generator = torch.Generator().manual_seed(seed)
    if plane == "adversarial":
        u = _unit(_fgsm_sign(model, image))
    else:
        u = _unit(torch.randn(image.shape, generator=generator, dtype=torch.float64))
    v = torch.randn(image.shape, generator=generator, dtype=torch.float64)
    v = _unit(v - (v * u).sum() * u)
    return u, v


def _unit(direction: torch.Tensor) -> torch.Tensor:
    return direction / direction.norm()


def _fgsm_sign(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    x = image.float().unsqueeze(0).to(device).requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), x)
    sign = grad[0].sign().double().cpu()
    if not sign.abs().sum() > 0:
        raise RobenchError("the first model's input gradient is zero at this image; use --plane random")
    return sign


@torch.no_grad()
def _classify_plane(model, image, u, v, coords, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and max softmax at x + coords[i]*u + coords[j]*v, as R x R grids [i, j]."""
    device = next(model.parameters()).device
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    a, b = a.reshape(-1, 1), b.reshape(-1, 1)
    x, u, v = image.double().reshape(1, -1), u.reshape(1, -1), v.reshape(1, -1)
    preds, confs = [], []
    for start in range(0, len(a), batch_size):
        points = x + a[start : start + batch_size] * u + b[start : start + batch_size] * v
        probs = model(points.float().reshape(-1, *image.shape).to(device)).softmax(1)
        conf, pred = probs.max(1)
        preds.append(pred.cpu())
        confs.append(conf.cpu())
    shape = (len(coords), len(coords))
    return torch.cat(preds).reshape(shape), torch.cat(confs).reshape(shape)


def boundary_distance(grid: torch.Tensor, coords: torch.Tensor) -> float:
    """L2 distance from the centre to the nearest grid point of another class (inf: none in the grid)."""
    half = len(coords) // 2
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    other = grid != grid[half, half]
    return (a[other] ** 2 + b[other] ** 2).sqrt().min().item() if other.any() else math.inf


def decision_cells(
    models: list[nn.Module],
    image: torch.Tensor,
    *,
    plane: str = CellsConfig.plane,
    span: float = CellsConfig.span,
    resolution: int = CellsConfig.resolution,
    seed: int = CellsConfig.seed,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Classify a plane through `image` with every model (one plane, shared by all models).

    Args:
        models: classifiers taking pixels in [0, 1] (N x C x H x W) to logits, in eval mode.
        image: one C x H x W image, uint8 or float in [0, 1].
        plane, span, resolution, seed: see `CellsConfig`.
        batch_size: grid points per forward pass.

    Returns:
        dict with "grids" (per model an R x R int64 tensor: grids[m][i, j] is the class predicted at
        image + coords[i] * u + coords[j] * v), "confidence" (per model the R x R max softmax),
        "distances" (per model the boundary distance, see `boundary_distance`), "coords" (R,),
        "u" and "v" (the orthonormal directions, shaped like the image), "plane", "span" and
        "num_classes".
    """
    CellsConfig(plane=plane, span=span, resolution=resolution, seed=seed).validate()
    if not models:
        raise RobenchError("decision_cells needs at least one model")
    image = to_unit_float(image)
    u, v = plane_directions(models[0], image, plane=plane, seed=seed)
    coords = grid_coords(span, resolution)
    grids, confidence = [], []
    for model in models:
        grid, conf = _classify_plane(model, image, u, v, coords, batch_size)
        grids.append(grid)
        confidence.append(conf)
    with torch.no_grad():
        num_classes = models[0](image.float().unsqueeze(0).to(next(models[0].parameters()).device)).shape[1]
    return {
        "grids": grids, "confidence": confidence,
        "distances": [boundary_distance(g, coords) for g in grids],
        "coords": coords, "u": u, "v": v, "plane": plane, "span": float(span), "num_classes": num_classes,
    }  # fmt: skip


def write_cells(run_dirs: list[str | Path], config: CellsConfig, out: str | Path) -> dict[str, Any]:
    """Draw the decision cells of robench run directories around one test image into a PNG.

    Returns `decision_cells`' dict plus "labels" (per model), "label" (the image's true class)
    and "out" (the PNG's path).
    """
    from .data import load_dataset
    from .plots import cells_figure, save_png
    from .sources import from_run

    config.validate()
    out = Path(out)
    if not run_dirs:
        raise RobenchError("name at least one model (a robench run directory)")
    if out.suffix.lower() != ".png":
        raise RobenchError(f"--out must be a .png file, got {out}")
    sources = [from_run(run) for run in run_dirs]
    datasets = sorted({s.dataset for s in sources})
    if len(datasets) > 1:
        raise RobenchError(f"the models were trained on different datasets ({', '.join(datasets)})")
    images, labels = load_dataset(datasets[0], "test", subset=config.index + 1)
    if config.index >= len(labels):
        raise RobenchError(f"--index {config.index} is past the end of the {datasets[0]} test set ({len(labels)} images)")
    result = decision_cells(
        [s.model.eval() for s in sources], images[config.index], plane=config.plane, span=config.span,
        resolution=config.resolution, seed=config.seed,
    )  # fmt: skip
    result["labels"] = [f"{Path(s.name).name or s.name} [{s.defense}]" for s in sources]
    result["label"] = int(labels[config.index])
    title = (
        f"{datasets[0]} test image {config.index} (class {result['label']}): {config.plane} plane, "
        f"±{config.span:g} (L2)"
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_png(cells_figure(result, result["labels"], title), out)
    except OSError as exc:
        raise RobenchError(f"cannot write {out}: {exc.strerror or exc}") from None
    result["out"] = out
    return result
