"""Exact verification of small ReLU networks by mixed-integer linear programming (scipy's HiGHS).

Tjeng, Xiao & Tedrake (2019), "Evaluating robustness of neural networks with mixed integer programming":
each ReLU a = max(0, z) with pre-activation bounds l <= z <= u is exact in a MILP as
    a >= 0,  a >= z,  a <= z - l (1 - d),  a <= u d,  d in {0, 1};
stable neurons (l >= 0: a = z; u <= 0: a = 0) need no binary, so tight bounds (here from CROWN, which is
never looser than IBP, see `bounds`) make the problem smaller. For every class j != y not already
certified by CROWN, one MILP minimizes logit_y - logit_j over the L∞ ball ∩ [0, 1], the classes in the
order of CROWN's bound (most likely broken first). An example is
- certified when HiGHS's proven lower bound (its dual bound, valid also when it stops at the time limit)
  exceeds `tol` for every j;
- broken when a solution with negative margin, re-checked like any adversarial (within the ball and box,
  misclassified by the model in float32: `robench.attacks.verify.verify_adversarials`), exists; a
  solver point that fails the re-check makes that class unknown, never broken;
- unknown otherwise (time limit, solver failure, a margin within solver tolerance of 0).
L2 balls are not linear constraints and are refused (an L2 MILP would need a quadratic solver).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import RobenchError
from .api import TOLERANCE, CertifyResult, _clean_wrong, _eps_tensor, _num_classes, check_inputs
from .bounds import InputSet, margin_bounds, margin_spec
from .layers import AffineOp, flatten_layers, build_ops

MILP_UNSUPPORTED = (nn.Tanh, nn.MaxPool2d)


@dataclass(frozen=True)
class ReluNetwork:
    """Affine maps (W_k, b_k) with ReLUs between them, dense float64 on flattened shapes, and the index of
    each ReLU among the bound engine's ops (to read its pre-activation interval)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    relu_ops: list[int]


def relu_network(model: nn.Module, in_shape: tuple[int, ...]) -> tuple[ReluNetwork, list]:
    """The model as a ReluNetwork, and the float64 CPU ops the bounds run on; one-line errors otherwise."""
    for position, layer in enumerate(flatten_layers(model, "verify_milp")):
        if isinstance(layer, MILP_UNSUPPORTED):
            raise RobenchError(f"verify_milp: unsupported layer {type(layer).__name__} at position {position} "
                               "(the MILP handles ReLU networks: Linear, Conv2d, ReLU, AvgPool2d, Flatten, "
                               "Dropout, BatchNorm, Normalize)")  # fmt: skip
    ops = build_ops(model, in_shape, dtype=torch.float64, device=torch.device("cpu"), who="verify_milp")
    kinds = ["affine" if isinstance(op, AffineOp) else op.kind for op in ops]
    if kinds != ["relu" if k % 2 else "affine" for k in range(len(ops))] or len(ops) % 2 == 0:
        raise RobenchError("verify_milp: the network must alternate affine layers and ReLUs, first and last affine")
    dense = [op.dense() for op in ops[::2]]
    net = ReluNetwork([w.numpy() for w, _ in dense], [b.numpy() for _, b in dense], list(range(1, len(ops), 2)))
    return net, ops


class _Rows:
    """Constraint rows lb <= A v <= ub collected as sparse triplets."""

    def __init__(self):
        self.rows, self.cols, self.vals, self.lb, self.ub = [], [], [], [], []
        self.count = 0

    def add(self, blocks: list[tuple[np.ndarray, np.ndarray]], lb: np.ndarray, ub: np.ndarray) -> None:
        """blocks: (coefficients (m, k), variable indices (k,)) side by side, for m new rows."""
        for coef, cols in blocks:
            r, c = np.nonzero(coef)
            self.rows.append(r + self.count)
            self.cols.append(cols[c])
            self.vals.append(coef[r, c])
        self.lb.append(lb)
        self.ub.append(ub)
        self.count += len(lb)


def build_problem(net: ReluNetwork, pre: list[tuple[np.ndarray, np.ndarray]], x_lo: np.ndarray, x_hi: np.ndarray):
    """The big-M MILP's feasible set: variables, their bounds and integrality, constraints; `last` indexes
    the variables of the last hidden layer's output (the input x if there is none)."""
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.sparse import coo_matrix

    lo, hi, integer = [x_lo], [x_hi], [np.zeros(len(x_lo))]
    prev = np.arange(len(x_lo))
    rows, count = _Rows(), len(x_lo)
    for (w, b), (l, u) in zip(zip(net.weights, net.biases), pre):
        n = len(b)
        act = np.arange(count, count + n)
        lo.append(np.maximum(l, 0))
        hi.append(np.maximum(u, 0))
        integer.append(np.zeros(n))
        count += n
        on, unstable = l >= 0, (l < 0) & (u > 0)
        eye = np.eye(n)
        if on.any():  # a = W prev + b
            rows.add([(eye[on], act), (-w[on], prev)], b[on], b[on])
        k = int(unstable.sum())
        if k:
            binary = np.arange(count, count + k)
            lo.append(np.zeros(k))
            hi.append(np.ones(k))
            integer.append(np.ones(k))
            count += k
            e, wu, lu, uu = eye[unstable], w[unstable], l[unstable], u[unstable]
            rows.add([(e, act), (-wu, prev)], b[unstable], np.full(k, np.inf))  # a >= z
            rows.add([(e, act), (-wu, prev), (-np.diag(lu), binary)], np.full(k, -np.inf), b[unstable] - lu)
            rows.add([(e, act), (-np.diag(uu), binary)], np.full(k, -np.inf), np.zeros(k))  # a <= u d
        prev = act
    matrix = coo_matrix((np.concatenate(rows.vals) if rows.vals else np.zeros(0),
                         (np.concatenate(rows.rows) if rows.rows else np.zeros(0, int),
                          np.concatenate(rows.cols) if rows.cols else np.zeros(0, int))),
                        shape=(rows.count, count)).tocsr()  # fmt: skip
    constraints = [LinearConstraint(matrix, np.concatenate(rows.lb), np.concatenate(rows.ub))] if rows.count else []
    return {"bounds": Bounds(np.concatenate(lo), np.concatenate(hi)), "integrality": np.concatenate(integer),
            "constraints": constraints, "last": prev, "size": count}  # fmt: skip


def solve_margin(problem: dict, net: ReluNetwork, y: int, j: int, time_limit: float):
    """min of logit_y - logit_j over the problem's set: (proven lower bound, best value found or None, the
    input part of the best point or None, HiGHS status). The lower bound is -inf when none was proved."""
    from scipy.optimize import milp

    w, b = net.weights[-1], net.biases[-1]
    c = np.zeros(problem["size"])
    c[problem["last"]] = w[y] - w[j]
    const = b[y] - b[j]
    res = milp(c, integrality=problem["integrality"], bounds=problem["bounds"], constraints=problem["constraints"],
               options={"time_limit": max(time_limit, 1e-3), "disp": False})  # fmt: skip
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not math.isfinite(dual):
        dual = res.fun if res.status == 0 and res.fun is not None else -math.inf
    if res.x is None:
        return dual + const, None, None, res.status
    return dual + const, res.fun + const, res.x[: net.weights[0].shape[1]], res.status


def verify_milp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                time_limit: float = 30.0, bounds: str = "crown", tol: float = TOLERANCE) -> CertifyResult:  # fmt: skip
    """Decide each example exactly (certified / broken / unknown) by MILP over its L∞ ball ∩ [0, 1].

    Args:
        model: an nn.Sequential of affine layers (Linear, Conv2d, AvgPool2d, Flatten, Dropout and BatchNorm in
            eval mode, Normalize) and ReLUs, small enough for a MILP (a few hundred ReLUs at most).
        x: (B, *shape) float images in [0, 1]; solved on the CPU whatever their device.
        y: (B,) labels.
        eps: the L∞ radius, one for all or one per example.
        norm: "linf" only (L2 raises RobenchError).
        time_limit: seconds per example, shared by its classes; when it runs out the example is unknown.
        bounds: "crown" or "ibp": the pre-activation bounds that decide which ReLUs need a binary.
        tol: a certified example's proven margin exceeds this (logit units, see `api`).

    Returns:
        CertifyResult; `counterexamples` holds each broken example's re-checked point.
    """
    check_inputs(x, y, norm, "verify_milp")
    if norm != "linf":
        raise RobenchError("verify_milp: only norm='linf' (an L2 ball is not a linear constraint; "
                           "use certify(..., norm='l2') for L2 bounds)")  # fmt: skip
    if bounds not in ("crown", "ibp"):
        raise RobenchError(f"verify_milp: bounds must be 'crown' or 'ibp', got {bounds!r}")
    net, ops = relu_network(model, tuple(x.shape[1:]))
    num_classes = _num_classes(ops, "verify_milp")
    xc, yc = x.detach().double().cpu(), y.cpu()
    eps_t = _eps_tensor(eps, len(x), "cpu", torch.float64, "verify_milp")
    inputs = InputSet(xc, eps_t, "linf")
    with torch.no_grad():
        crown, intervals = margin_bounds(ops, inputs, margin_spec(yc, num_classes, torch.float64), bounds)
    wrong = _clean_wrong(model, x, y)
    status, margins, points, seconds = [], [], x.detach().float().clone(), []
    for i in range(len(x)):
        start = time.perf_counter()
        pre = [(intervals[k][0][i].flatten().numpy(), intervals[k][1][i].flatten().numpy()) for k in net.relu_ops]
        word, margin, point = ("broken", float(crown[i].min()), None) if wrong[i] else _decide(
            model, net, pre, xc[i], int(yc[i]), float(eps_t[i]), crown[i], time_limit, tol)  # fmt: skip
        if point is not None:
            points[i] = point.to(points.device)
        status.append(word)
        margins.append(margin)
        seconds.append(time.perf_counter() - start)
    return CertifyResult(tuple(status), torch.tensor(margins, dtype=torch.float64), points,
                         torch.tensor(seconds, dtype=torch.float64))  # fmt: skip


def _decide(model, net, pre, x, y, eps, crown_row, time_limit, tol):
    """(verdict, proven lower margin, re-checked counterexample or None) for one example."""
    deadline = time.perf_counter() + time_limit
    x_lo, x_hi = (x - eps).clamp(0, 1).flatten().numpy(), (x + eps).clamp(0, 1).flatten().numpy()
    problem = build_problem(net, pre, x_lo, x_hi)
    others = [j for j in range(len(net.biases[-1])) if j != y]
    lowers = {j: float(bound) for j, bound in zip(others, crown_row)}
    undecided = False
    for j in sorted(others, key=lambda k: lowers[k]):
        if lowers[j] > tol:
            continue  # CROWN already proved this class
        left = deadline - time.perf_counter()
        if left <= 0:
            undecided = True
            continue
        lower, value, point, _ = solve_margin(problem, net, y, j, left)
        lowers[j] = max(lowers[j], lower)
        if lowers[j] > tol:
            continue
        if value is not None and value < 0:
            candidate = _recheck(model, x, point, y, eps)
            if candidate is not None:
                return "broken", min(lowers.values()), candidate
        undecided = True
    return ("unknown" if undecided else "certified"), min(lowers.values()), None


def _recheck(model, x, point, y, eps):
    """The solver's point clipped into the ball ∩ box, as float32, if the model misclassifies it; else None."""
    from ..attacks.verify import verify_adversarials

    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    candidate = torch.from_numpy(point).view_as(x).clamp(lo, hi).float().unsqueeze(0)
    device = next(iter(model.parameters()), torch.zeros(())).device
    was_training = model.training
    model.eval()
    try:
        ok = verify_adversarials(model, x.float().unsqueeze(0).to(device), candidate.to(device),
                                 torch.tensor([y], device=device), eps, "linf")  # fmt: skip
    finally:
        model.train(was_training)
    return candidate[0] if bool(ok[0]) else None
