"""The re-check of every adversarial example: an attack library's success flag is a claim, this is the fact."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RobenchError

TOLERANCE = 1e-6  # absolute slack of the re-check of every adversarial example (norm, box)
# Relative slack of the norm re-check. Adversarials are float32 images: the norm of (adv - x) carries a
# rounding error that grows with the norm (measured: up to 8e-8 of ε for clipping-aware L2 noise, MNIST to
# ImageNet sizes), so at L2 ε >= 12 an absolute 1e-6 alone rejected valid draws. 1e-5 is 100x that error
# and far below any grid's spacing.
RELATIVE_TOLERANCE = 1e-5


def predictions_wrong(model_fn: Any, images: torch.Tensor, labels: torch.Tensor, votes: int = 1) -> torch.Tensor:
    """Misclassified by a fresh forward pass, or, with votes > 1 (a randomized model), by a strict majority of
    `votes` passes: one noisy pass is a coin flip, not a verdict (AutoAttack's `rand` version re-checks the
    same way). In full fp32 (TF32 off): the verdict must not depend on the GPU."""
    from ..devices import full_fp32

    with torch.no_grad(), full_fp32():
        wrong = torch.zeros(len(labels), dtype=torch.int64, device=labels.device)
        for _ in range(max(1, votes)):
            wrong += (model_fn(images).argmax(1) != labels).long()
    return wrong * 2 > max(1, votes)


def _clean_correct(fmodel: Any, images: torch.Tensor, labels: torch.Tensor, votes: int = 1) -> torch.Tensor:
    """Clean correctness (by the majority of `votes` passes), after the input checks Foolbox would otherwise
    make with a bare assert."""
    if len(images) != len(labels):
        raise RobenchError(f"{len(images)} images but {len(labels)} labels")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise RobenchError("attack inputs must be float images in [0, 1] (use robench.data.to_unit_float)")
    return ~predictions_wrong(fmodel, images, labels, votes)  # as the re-check: ε = 0 is clean correctness


def verify_adversarials(
    model_fn: Any, images: torch.Tensor, advs: torch.Tensor, labels: torch.Tensor, eps: float | None, norm: str,
    *, tolerance: float = TOLERANCE, relative: float = RELATIVE_TOLERANCE, votes: int = 1,
) -> torch.Tensor:  # fmt: skip
    """Which returned images are real adversarials: within ε in `norm` (size <= ε·(1 + relative) +
    tolerance, i.e. ε·(1 + 1e-5) + 1e-6 by default; eps None: any size), every pixel in [0, 1]
    (± tolerance), and misclassified by a fresh forward pass in full fp32 (TF32 off: the verdict must
    not depend on the GPU).

    An attack library's success flag is a claim; this is the check. The norm's slack is relative as well
    as absolute because float32 rounding of the adversarial grows with its size (see RELATIVE_TOLERANCE).
    With votes > 1, misclassified by a strict majority of that many passes (`predictions_wrong`).
    Returns a bool tensor (N,).
    """
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.bool, device=labels.device)
    fooled = predictions_wrong(model_fn, advs.clamp(0, 1), labels, votes)
    return within_ball(images, advs, eps, norm, tolerance=tolerance, relative=relative) & fooled


def within_ball(images: torch.Tensor, advs: torch.Tensor, eps: float | None, norm: str, *,
                tolerance: float = TOLERANCE, relative: float = RELATIVE_TOLERANCE) -> torch.Tensor:  # fmt: skip
    """The geometric half of the re-check: finite, every pixel in [0, 1] (± tolerance), and within ε in `norm`
    (size <= ε·(1 + relative) + tolerance; eps None: any size). Bool (N,)."""
    delta = (advs.double() - images.double()).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    finite = torch.isfinite(advs.flatten(1)).all(1)
    in_box = (advs.flatten(1).double() >= -tolerance).all(1) & (advs.flatten(1).double() <= 1 + tolerance).all(1)
    in_ball = torch.ones_like(in_box) if eps is None else size <= eps * (1 + relative) + tolerance
    return finite & in_box & in_ball
