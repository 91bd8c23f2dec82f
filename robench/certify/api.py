"""certify() and certified_radius(): per-example verdicts from IBP or CROWN bounds, at a fixed ε or by bisection.

A verdict is one of three words, shared with the MILP (`milp.verify_milp`) so that a caller stores them
alike: "certified" (proved: no input in the ε-set changes the prediction), "broken" (a re-checked
counterexample exists; for bounds that is only the clean input itself, when the model already misclassifies
it) or "unknown" (neither proved nor broken). Unknown is a verdict to count, never a row to drop.

Floating point. Bounds are computed in float64 by default, on a float64 copy of the model: the rounding
error of the bound computation itself is then ~1e-15 relative, far below any margin that matters. The
bounds are about the network in exact arithmetic with the model's (float32) weights; the model run in
float32 differs from it by rounding of order 1e-6 of the logits' size. An example is therefore certified
only when its lower margin exceeds `tol` = 1e-4 logit units, which is 100x that rounding for logits of
order 1 to 10, and costs a negligible share of examples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RobenchError
from .bounds import CROWN_BUDGET, InputSet, crown_cost, margin_bounds, margin_spec
from .layers import NonlinearOp, build_ops

TOLERANCE = 1e-4  # logit units a lower margin must exceed to certify (see the module docstring)
NORMS = ("linf", "l2")
METHODS = ("ibp", "crown")
CHUNK_NUMBERS = 50_000_000  # numbers held at once by one chunk of examples (400 MB in float64)


@dataclass(frozen=True)
class CertifyResult:
    """Per-example verdicts of one certification run at one ε.

    Args:
        status: "certified", "broken" or "unknown" per example.
        lower_margin: (B,) float64, a proven lower bound of min over j != y of logit_y - logit_j over the set
            (-inf where nothing was proved, e.g. a MILP that ran out of time).
        counterexamples: (B, *shape) float32 on the input's device: a re-checked misclassified point in the
            set where status is "broken", the clean input elsewhere.
        seconds: (B,) wall time per example (a batch's time shared equally for IBP / CROWN).
    """

    status: tuple[str, ...]
    lower_margin: torch.Tensor
    counterexamples: torch.Tensor
    seconds: torch.Tensor

    @property
    def certified(self) -> torch.Tensor:
        """(B,) bool: status == "certified"."""
        return torch.tensor([s == "certified" for s in self.status], dtype=torch.bool)

    def counts(self) -> dict[str, int]:
        """How many examples got each verdict; the three always sum to B."""
        return {word: sum(s == word for s in self.status) for word in ("certified", "broken", "unknown")}


def check_inputs(x: torch.Tensor, y: torch.Tensor, norm: str, who: str) -> None:
    """One-line errors for inputs the engines would otherwise misread."""
    if norm not in NORMS:
        raise RobenchError(f"{who}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not x.is_floating_point() or x.dim() < 2:
        raise RobenchError(f"{who}: x must be float images (B, ...) in [0, 1] (use robench.data.to_unit_float)")
    if len(x) != len(y):
        raise RobenchError(f"{who}: {len(x)} images but {len(y)} labels")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise RobenchError(f"{who}: x must lie in [0, 1] (use robench.data.to_unit_float)")


def _eps_tensor(eps, n: int, device, dtype, who: str) -> torch.Tensor:
    eps_t = torch.as_tensor(eps, dtype=dtype, device=device).flatten()
    eps_t = eps_t.expand(n).clone() if eps_t.numel() == 1 else eps_t
    if eps_t.numel() != n or not torch.isfinite(eps_t).all() or (eps_t < 0).any():
        raise RobenchError(f"{who}: eps must be one finite number >= 0 or one per example")
    return eps_t


def _num_classes(ops: list, who: str) -> int:
    shape = ops[-1].out_shape
    if len(shape) != 1 or shape[0] < 2:
        raise RobenchError(f"{who}: the model must output logits of shape (B, K) with K >= 2, got (B, {shape})")
    return shape[0]


def _chunk_size(ops: list, method: str, num_classes: int, crown_budget: int) -> int:
    """Examples per chunk so that one chunk's bound tensors stay near CHUNK_NUMBERS numbers."""
    widest = max(math.prod(op.in_shape) for op in ops)
    per_example = 2 * (num_classes - 1) * widest
    for i, op in enumerate(ops):
        if method == "crown" and isinstance(op, NonlinearOp) and i > 1 and crown_cost(ops, i) <= crown_budget:
            per_example = max(per_example, 2 * crown_cost(ops, i))
    return max(1, CHUNK_NUMBERS // per_example)


def lower_margins(ops: list, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, method: str,
                  dtype: torch.dtype, crown_budget: int = CROWN_BUDGET) -> torch.Tensor:  # fmt: skip
    """min over j != y of the lower bound of logit_y - logit_j, per example: (B,) in `dtype` (the ops' dtype)."""
    num_classes = _num_classes(ops, "certify")
    chunk = _chunk_size(ops, method, num_classes, crown_budget)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            part = slice(start, start + chunk)
            inputs = InputSet(x[part].to(dtype), eps[part].to(dtype), norm)
            spec = margin_spec(y[part], num_classes, dtype)
            bound, _ = margin_bounds(ops, inputs, spec, method, crown_budget)
            out.append(bound.amin(1))
    return torch.cat(out) if out else x.new_zeros(0, dtype=dtype)


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
            method: str = "crown", dtype: torch.dtype = torch.float64, tol: float = TOLERANCE,
            crown_budget: int = CROWN_BUDGET) -> CertifyResult:  # fmt: skip
    """Certify each example's prediction over its ε-ball ∩ [0, 1] by IBP or CROWN bounds.

    Args:
        model: an nn.Sequential of supported layers (`layers.SUPPORTED`) taking pixels in [0, 1]; certified in
            eval mode, on a copy.
        x: (B, *shape) float images in [0, 1]; the bounds run on x's device (CPU or CUDA).
        y: (B,) labels.
        eps: the radius, one for all or one per example (a (B,) tensor).
        norm: "linf" or "l2".
        method: "ibp" (interval bounds, Gowal et al. 2018) or "crown" (Zhang et al. 2018; see `bounds`).
        dtype: the dtype the bounds are computed in (float64: see the module docstring).
        tol: a certified example's lower margin exceeds this (logit units).
        crown_budget: numbers per example one intermediate CROWN pass may use before IBP is used instead.

    Returns:
        CertifyResult: certified where the lower margin > tol; broken where the model misclassifies the clean
        input (its counterexample is x); unknown otherwise.
    """
    if method not in METHODS:
        raise RobenchError(f"certify: method must be one of {', '.join(METHODS)}, got {method!r}")
    check_inputs(x, y, norm, "certify")
    start = time.perf_counter()
    ops = build_ops(model, tuple(x.shape[1:]), dtype=dtype, device=x.device)
    eps_t = _eps_tensor(eps, len(x), x.device, dtype, "certify")
    margin = lower_margins(ops, x, y.to(x.device), eps_t, norm, method, dtype, crown_budget)
    wrong = _clean_wrong(model, x, y)
    status = tuple("broken" if w else "certified" if m > tol else "unknown" for m, w in zip(margin.tolist(), wrong))
    if any(w and m > tol for m, w in zip(margin.tolist(), wrong)):
        raise RobenchError("certify: an example is certified but its clean input is misclassified: a soundness "
                           "bug in robench.certify, please report it with the model")  # fmt: skip
    seconds = torch.full((len(x),), (time.perf_counter() - start) / max(1, len(x)), dtype=torch.float64)
    return CertifyResult(status, margin.double().cpu(), x.float().clone(), seconds)


def _clean_wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[bool]:
    """The model's own float32 verdict on the clean inputs (eval mode, TF32 off), as every re-check uses."""
    from ..attacks.verify import predictions_wrong

    was_training = model.training
    model.eval()
    try:
        return predictions_wrong(model, x.float(), y.to(x.device)).tolist()
    finally:
        model.train(was_training)


def certified_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf",
                     method: str = "crown", hi: float = 0.5, steps: int = 12, dtype: torch.dtype = torch.float64,
                     tol: float = TOLERANCE, crown_budget: int = CROWN_BUDGET) -> torch.Tensor:  # fmt: skip
    """A proven lower bound of each example's distance to the decision boundary, by bisection on ε.

    Every returned radius is an ε at which the example was certified (0 where none was), so it is a valid
    lower bound whether or not certification is monotone in ε. Precision: hi / 2**steps.

    Args:
        model, x, y, norm, method, dtype, tol, crown_budget: as `certify`.
        hi: the largest radius tried; an example certified at hi gets hi.
        steps: bisection steps after the first try at hi.

    Returns:
        (B,) float64 radii on the CPU.
    """
    if method not in METHODS:
        raise RobenchError(f"certified_radius: method must be one of {', '.join(METHODS)}, got {method!r}")
    check_inputs(x, y, norm, "certified_radius")
    if not hi > 0:
        raise RobenchError(f"certified_radius: hi must be > 0, got {hi}")
    ops = build_ops(model, tuple(x.shape[1:]), dtype=dtype, device=x.device, who="certified_radius")
    y = y.to(x.device)
    top = torch.full((len(x),), float(hi), dtype=dtype, device=x.device)
    at_top = lower_margins(ops, x, y, top, norm, method, dtype, crown_budget) > tol
    low = torch.where(at_top, top, torch.zeros_like(top))
    high = top.clone()
    for _ in range(steps):
        mid = (low + high) / 2
        todo = low < high
        if not todo.any():
            break
        ok = torch.zeros_like(todo)
        ok[todo] = lower_margins(ops, x[todo], y[todo], mid[todo], norm, method, dtype, crown_budget) > tol
        low, high = torch.where(ok, mid, low), torch.where(ok | ~todo, high, mid)
    return low.double().cpu()
