"""Matplotlib figures: accuracy-vs-epsilon curves (the paper's Figure 3) and decision cells (Figure 1).

Figures are built with `matplotlib.figure.Figure` on the Agg canvas, never through pyplot: no global
figure state, no GUI backend picked up from the environment, and nothing to close. matplotlib is
imported inside the functions so `import robench.report` stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import write_atomic
from .untrusted import for_figure

FIGSIZE = (8, 5)  # inches; at DPI 100 this is the documented 800 x 500 px
DPI = 100


@dataclass(frozen=True)
class Curve:
    """One line of an accuracy-vs-epsilon plot: a model, or the mean of k models sharing a defense.

    Args:
        label: legend text.
        eps: epsilon grid (increasing).
        mean: accuracy at each epsilon (the mean over models when k > 1).
        std: sample standard deviation over models at each epsilon (None when k == 1).
        k: number of models averaged.
        points: the k models' own accuracies (k x len(eps)), drawn as points (None: not drawn).
        defense: the defense label its style comes from (`figure_style.defense_style`).
        legend: the legend text (default: label).
        low, high: the 95% band at each epsilon (binomial for one model, across models for k > 1).
    """

    label: str
    eps: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None
    k: int
    points: np.ndarray | None = None
    defense: str | None = None
    legend: str | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> Any:
    """A pyplot-free figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, *, dpi: int = DPI) -> None:
    """Write a figure as PNG atomically, at the figure's own size (no tight bbox: sizes stay exact)."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def save_figure(fig: Any, path: str | Path, fmt: str) -> None:
    """Write a figure atomically as png (300 dpi: print resolution), svg or pdf (vector)."""
    from .figure_style import RC_PARAMS

    dpi = RC_PARAMS["savefig.dpi"]
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_metadata(fmt)))


def _metadata(fmt: str) -> dict | None:
    """No creation date in vector files: the same figure gives the same bytes."""
    return {"Date": None} if fmt == "svg" else {"CreationDate": None} if fmt == "pdf" else None


def accuracy_figure(curves: list[Curve], *, title: str, xlabel: str, dataset: str | None = None,
                    caption: str | None = None) -> Any:  # fmt: skip
    """Robust accuracy (%) vs epsilon, one line per curve in its defense's own style (the same in
    every figure); its 95% band shaded; where a curve averages k > 1 models (seeds), each model's own
    accuracy as a small point. The epsilon axis stops where every curve has reached zero, and reads
    in 255ths on 8-bit colour datasets (CIFAR-10, ImageNet). `caption` goes under the axes."""
    from matplotlib import rc_context

    from .figure_style import RC_PARAMS, defense_style

    with rc_context(RC_PARAMS):
        fig = new_figure()
        ax = fig.add_subplot()
        for index, curve in enumerate(curves):
            style = defense_style(curve.defense) if curve.defense is not None else {"color": f"C{index % 10}"}
            label = for_figure(curve.legend or curve.label)
            ax.plot(curve.eps, 100 * np.asarray(curve.mean, float), label=label, **style)
            if curve.low is not None and curve.high is not None:
                ax.fill_between(curve.eps, 100 * np.asarray(curve.low, float), 100 * np.asarray(curve.high, float),
                                color=style["color"], alpha=0.15, lw=0)  # fmt: skip
            if curve.points is not None and curve.k > 1:  # each seed's own model, beside the mean
                for row in np.asarray(curve.points, float):
                    ax.plot(curve.eps, 100 * row, ls="none", marker=".", markersize=3, color=style["color"], alpha=0.6)
        last = zero_from(curves)
        if last is not None:
            first = min(float(np.min(c.eps)) for c in curves)
            ax.set_xlim(first - 0.02 * (last - first), last + 0.02 * (last - first))
        if dataset in ("cifar10", "imagenet"):
            _ticks_in_255ths(ax, sorted({float(e) for c in curves for e in c.eps if last is None or e <= last}))
        ax.set_xlabel(for_figure(xlabel))
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(for_figure(title))
        if curves:
            ax.legend(loc="best")
        if caption:
            fig.text(0.01, 0.01, for_figure(caption), fontsize=7, color="#444444", ha="left", va="bottom", wrap=True)
            fig.tight_layout(rect=(0, 0.05, 1, 1))
        else:
            fig.tight_layout()
    return fig


def zero_from(curves: list[Curve]) -> float | None:
    """The smallest epsilon at which every curve has reached zero accuracy (mean and band), or None:
    the grid beyond it only repeats zeros."""
    if not curves:
        return None
    grid = sorted({float(e) for c in curves for e in c.eps})
    for eps in grid[1:]:
        at_zero = []
        for c in curves:
            where = np.flatnonzero(np.isclose(np.asarray(c.eps, float), eps))
            top = c.high if c.high is not None else c.mean
            at_zero.append(len(where) > 0 and float(np.asarray(top, float)[where[0]]) <= 0.0)
        if all(at_zero):
            return eps if eps < grid[-1] else None
    return None


def _ticks_in_255ths(ax: Any, eps: list[float]) -> None:
    """Label the ticks k/255 where the grid is in 255ths (every value within 1e-6 of one)."""
    if not eps or not all(abs(e * 255 - round(e * 255)) < 1e-4 for e in eps):
        return
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{round(e * 255)}/255" if e else "0" for e in eps])


# Ten classes in ten hues with no grey among them (tab10's grey made MNIST's 7 look like "no class"):
# Okabe & Ito's seven colours, then three of Paul Tol's, ordered so neighbours differ in hue.
CLASS_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#332288",
                 "#44AA99", "#882255")  # fmt: skip


def class_colors(num_classes: int) -> np.ndarray:
    """A fixed qualitative palette (CLASS_PALETTE; tab20 beyond 10 classes): class c has one colour everywhere."""
    import matplotlib

    if num_classes <= len(CLASS_PALETTE):
        colors = np.array([[int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)] for c in CLASS_PALETTE])
    else:
        colors = np.asarray(matplotlib.colormaps["tab20"].colors, dtype=float)
    return colors[np.arange(num_classes) % len(colors)]


def shade(classes: np.ndarray, confidence: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB per grid point: the class colour blended toward white as the max softmax falls to 1/C.

    A floor of 25% colour keeps even a maximally unsure point's class readable.
    """
    colors = class_colors(num_classes)[classes]
    chance = 1.0 / num_classes
    strength = np.clip((confidence - chance) / (1.0 - chance), 0.0, 1.0)
    strength = 0.25 + 0.75 * strength
    return 1.0 - strength[..., None] * (1.0 - colors)


def cells_figure(result: dict[str, Any], labels: list[str], title: str) -> Any:
    """One panel per model of `robench.cells.decision_cells`' result, on the same plane.

    Grid index i (coefficient of u) runs along x, j (coefficient of v) along y; the image sits at
    the origin, and the circle's radius is the model's boundary distance.
    """
    from matplotlib.patches import Circle, Patch

    coords = result["coords"].numpy()
    step = coords[1] - coords[0]
    extent = (coords[0] - step / 2, coords[-1] + step / 2) * 2
    k, num_classes = len(result["grids"]), result["num_classes"]
    fig = new_figure((4.2 * k, 5.0))
    axes = fig.subplots(1, k, squeeze=False)[0]
    xlabel = "a: along FGSM sign direction" if result["plane"] == "adversarial" else "a: random direction 1"
    for ax, grid, conf, dist, label in zip(axes, result["grids"], result["confidence"], result["distances"], labels):
        rgb = shade(grid.numpy(), conf.numpy(), num_classes).transpose(1, 0, 2)  # rows = j = v axis
        ax.imshow(rgb, origin="lower", extent=extent, interpolation="nearest")
        ax.plot([0], [0], marker="*", markersize=12, color="black", markeredgecolor="white")
        if math.isfinite(dist):
            ax.add_patch(Circle((0, 0), dist, fill=False, color="black", lw=1.5, ls="--"))
            where = f"nearest other class at {dist:.2f}"
        else:
            where = f"no other class within ±{result['span']:g}"
        ax.set_title(f"{for_figure(label)}\n{where}", fontsize="small")
        ax.set_xlabel(xlabel, fontsize="small")
        ax.set_ylabel("b: random direction" + ("" if result["plane"] == "adversarial" else " 2"), fontsize="small")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
    colors = class_colors(num_classes)
    true = result.get("label")
    handles = [Patch(facecolor=colors[c], edgecolor="black" if c == true else colors[c], linewidth=2 if c == true else 0,
                     label=f"{c} (true)" if c == true else str(c)) for c in range(num_classes)]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=min(num_classes, 10), fontsize="small", title="predicted class")
    fig.suptitle(for_figure(title), fontsize="medium")
    fig.tight_layout(rect=(0, 0.12, 0.9, 1))
    _confidence_bar(fig, num_classes)  # after the layout: in its own axes at the right edge
    return fig


def _confidence_bar(fig: Any, num_classes: int) -> None:
    """The colour bar of `shade`'s confidence scale: a class's colour at full strength means max
    softmax 1, faded toward white means near chance (1/C)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    chance = 1.0 / num_classes
    levels = np.linspace(chance, 1.0, 64)
    grey = shade(np.zeros(len(levels), dtype=int), levels, num_classes)  # class 0's colour, faded as drawn
    cmap = LinearSegmentedColormap.from_list("confidence", grey)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(chance, 1.0), cmap=cmap), cax=fig.add_axes((0.915, 0.22, 0.015, 0.62)))
    bar.set_label("confidence (max softmax; every class fades alike)", fontsize="small")
