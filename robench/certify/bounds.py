"""Bound propagation: interval bounds (IBP) and CROWN's backward linear bounds over an input set.

Input sets are an L∞ or L2 ball of radius ε around x intersected with the pixel box [0, 1].
- IBP (Gowal et al. 2018, "On the effectiveness of interval bound propagation"): an interval per neuron,
  pushed forward layer by layer; the margin spec is folded into the last affine layer ("elision").
- CROWN (Zhang et al. 2018): a linear function of the output (the spec) is pushed backward to the input
  through the relaxations of `relax.py` and minimized over the input set in closed form.

Intermediate (pre-activation) bounds. CROWN needs [l, u] for every nonlinearity's input.
- The first nonlinearity's input is an affine function of x: its exact interval over the set comes from
  the dense map, once per batch (`_first_interval`), for both methods; for L∞ behind at most one mixing
  layer IBP is already exact and this is skipped.
- For each later one, CROWN runs with the identity as spec (2 x the neuron count rows: lower and upper)
  when that costs at most `crown_budget` numbers per example (spec rows x the widest layer crossed);
  otherwise the IBP interval is kept. MLPs get CROWN everywhere; large convolutional layers (LeNet's
  32x28x28 feature maps) get IBP intermediate bounds and CROWN for the final spec, which is CROWN-IBP's
  split (Zhang et al. 2020, "Towards stable and efficient training of verifiably robust neural networks").
Every CROWN interval is intersected with the IBP one (both are sound, so their intersection is), so
CROWN's intermediate bounds are never looser than IBP's and, IBP being inclusion-monotone, neither is the
IBP margin computed from them; `crown` returns the larger of that and the CROWN margin per spec row, so an
example IBP certifies CROWN certifies too. Within CROWN, max-pooling uses DeepPoly's linear relaxation
(`relax.maxpool_backward`), not intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..models import Normalize
from .layers import AffineOp, NonlinearOp
from .relax import maxpool_backward, relu_backward, tanh_backward

CROWN_BUDGET = 2_000_000  # numbers per example in one intermediate CROWN pass (16 MB in float64)
PREFIX_BUDGET = 25_000_000  # numbers in the dense first affine map (200 MB in float64; LeNet's first conv fits)


@dataclass(frozen=True)
class InputSet:
    """{x' : ||x' - x|| <= eps, 0 <= x' <= 1} per example; `lower`/`upper` is the enclosing box.

    Args:
        x: (B, *shape) centres, in the engines' dtype.
        eps: (B,) radii.
        norm: "linf" or "l2".
    """

    x: torch.Tensor
    eps: torch.Tensor
    norm: str

    @property
    def lower(self) -> torch.Tensor:
        return (self.x - self._eps_view()).clamp(0, 1)

    @property
    def upper(self) -> torch.Tensor:
        return (self.x + self._eps_view()).clamp(0, 1)

    def _eps_view(self) -> torch.Tensor:
        return self.eps.view(-1, *([1] * (self.x.dim() - 1)))

    def min_linear(self, lA: torch.Tensor, const: torch.Tensor) -> torch.Tensor:
        """min over the set of lA . x' + const, lA (B, S, *shape): (B, S).

        L∞ ball ∩ box is a box ([x - ε, x + ε] clipped to [0, 1]), minimized coordinate by coordinate.
        L2 ball ∩ box lies in both the L2 ball (minimum lA . x - ε ||lA||_2, Hölder) and the box
        [x - ε, x + ε] ∩ [0, 1]; each minimum is a lower bound over the intersection, so the larger is too.
        """
        bound = _box_min(lA, const, self.lower, self.upper)
        if self.norm == "l2":
            flat = lA.flatten(2)
            ball = (flat * self.x.flatten(1).unsqueeze(1)).sum(-1) - self.eps.unsqueeze(1) * flat.norm(dim=-1)
            bound = torch.maximum(bound, ball + const)
        return bound


def backward_bound(ops: list, end: int, spec: torch.Tensor, intervals: list, inputs: InputSet) -> torch.Tensor:
    """CROWN: a lower bound of spec . (output of ops[:end]) over `inputs`, spec (B, S, *shape): (B, S).

    `intervals[i]` holds the (lower, upper) interval of the input of ops[i], for every nonlinear op i < end.
    """
    lA, const = spec, spec.new_zeros(spec.shape[:2])
    for i in reversed(range(end)):
        op = ops[i]
        if isinstance(op, AffineOp):
            lA, c = op.backward(lA)
        elif op.kind == "relu":
            lA, c = relu_backward(lA, *intervals[i])
        elif op.kind == "tanh":
            lA, c = tanh_backward(lA, *intervals[i])
        else:
            lA, c = maxpool_backward(lA, *intervals[i], op.module)
        const = const + c
    return inputs.min_linear(lA, const)


def crown_cost(ops: list, end: int) -> int:
    """Numbers per example in a CROWN pass for the 2 x n neurons at ops[end]'s input: rows x widest layer."""
    widest = max(math.prod(op.in_shape) for op in ops[: end + 1])
    return 2 * math.prod(ops[end].in_shape) * widest


def interval_bounds(ops: list, inputs: InputSet, *, crown: bool, crown_budget: int = CROWN_BUDGET) -> list:
    """Intervals (lower, upper) of every op's input over `inputs`, then of the network's output.

    Args:
        ops: from `layers.build_ops`.
        inputs: the input set.
        crown: tighten each later nonlinear op's input interval with CROWN where that costs at most
            `crown_budget` numbers per example (see the module docstring). Either way the first
            nonlinearity's input, an affine function of x, gets its exact interval over the set when
            affordable (`_first_interval`), as IBP does for its first layer (Gowal et al. 2018): for L2 that is
            up to √d tighter than the enclosing box.

    Returns:
        A list of len(ops) + 1 intervals; entry i is the input of ops[i], the last one the output.
    """
    lower, upper = inputs.lower, inputs.upper
    intervals: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, op in enumerate(ops):
        if i == 1 and isinstance(op, NonlinearOp):
            lower, upper = _first_interval(ops[0], inputs, lower, upper)
        elif i > 1 and isinstance(op, NonlinearOp) and crown and crown_cost(ops, i) <= crown_budget:
            lower, upper = _crown_interval(ops, i, intervals, inputs, lower, upper)
        intervals.append((lower, upper))
        lower, upper = op.interval(lower, upper)
    intervals.append((lower, upper))
    return intervals


DIAGONAL = (Normalize, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Dropout, nn.Identity)


def _first_interval(op: AffineOp, inputs: InputSet, lower: torch.Tensor, upper: torch.Tensor):
    """The exact interval of the first affine map over the input set, intersected with IBP's.

    Skipped where IBP is exact already (L∞, and at most one layer that is not diagonal: IBP's |A| rad is
    then exact per output) or where the dense map would exceed PREFIX_BUDGET numbers. The dense map is the
    same for every example, so this costs one matrix product per batch, not a backward pass per example.
    """
    mixing = sum(not isinstance(layer, DIAGONAL) for layer in op.layers)
    if (inputs.norm == "linf" and mixing <= 1) or math.prod(op.in_shape) * math.prod(op.out_shape) > PREFIX_BUDGET:
        return lower, upper
    if op._dense is None:
        op._dense = op.dense()
    w, b = op._dense
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    lo, hi = inputs.lower.flatten(1), inputs.upper.flatten(1)
    low, high = lo @ w_pos.T + hi @ w_neg.T + b, hi @ w_pos.T + lo @ w_neg.T + b
    if inputs.norm == "l2":
        centre, reach = inputs.x.flatten(1) @ w.T + b, inputs.eps.unsqueeze(1) * w.norm(dim=1)
        low, high = torch.maximum(low, centre - reach), torch.minimum(high, centre + reach)
    return torch.maximum(lower, low.view_as(lower)), torch.minimum(upper, high.view_as(upper))


def _crown_interval(ops, end, intervals, inputs, lower, upper):
    """The IBP interval at ops[end]'s input, intersected with CROWN's (identity spec, both signs)."""
    batch, shape = lower.shape[0], lower.shape[1:]
    n = math.prod(shape)
    eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
    spec = torch.cat([eye, -eye]).view(1, 2 * n, *shape).expand(batch, -1, *shape)
    bound = backward_bound(ops, end, spec, intervals, inputs)
    crown_lower, crown_upper = bound[:, :n].view_as(lower), -bound[:, n:].view_as(upper)
    return torch.maximum(lower, crown_lower), torch.minimum(upper, crown_upper)


def margin_spec(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """C of shape (B, K - 1, K): row j is e_y - e_j over the K - 1 classes j != y (logit_y - logit_j)."""
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    rows = eye[labels].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K): e_y - e_j for every j
    keep = ~torch.nn.functional.one_hot(labels, num_classes).bool()
    return rows[keep].view(len(labels), num_classes - 1, num_classes)


def _box_min(lA: torch.Tensor, const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """min of lA . z + const over the box lower <= z <= upper: lA . upper + max(lA, 0) . (lower - upper)."""
    flat = lA.flatten(2)
    at_upper = torch.bmm(flat, upper.flatten(1).unsqueeze(2)).squeeze(2)
    return at_upper + torch.bmm(flat.clamp(min=0), (lower - upper).flatten(1).unsqueeze(2)).squeeze(2) + const


def margin_bounds(ops: list, inputs: InputSet, spec: torch.Tensor, method: str,
                  crown_budget: int = CROWN_BUDGET) -> tuple[torch.Tensor, list]:  # fmt: skip
    """Lower bounds of spec . logits over `inputs`, (B, S), by "ibp" or "crown", and the intervals used.

    IBP folds the spec into the last affine map and minimizes over that map's input interval ("elision",
    Gowal et al. 2018); CROWN returns the larger of that and its own backward bound (module docstring).
    """
    intervals = interval_bounds(ops, inputs, crown=method == "crown", crown_budget=crown_budget)
    last = len(ops) - 1
    if isinstance(ops[last], AffineOp):
        lA, const = ops[last].backward(spec)
        ibp = inputs.min_linear(lA, const) if last == 0 else _box_min(lA, const, *intervals[last])
    else:
        ibp = _box_min(spec, spec.new_zeros(spec.shape[:2]), *intervals[-1])
    if method == "ibp":
        return ibp, intervals
    return torch.maximum(ibp, backward_bound(ops, len(ops), spec, intervals, inputs)), intervals
