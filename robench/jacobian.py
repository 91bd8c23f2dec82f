"""Jacobian regularization (Hoffman, Roberts & Yaida 2019, arXiv:1908.02729), torch only.

For logits z = f(x) with C classes, the input-output Jacobian of one example is J(x) = dz/dx (C x D).
The training penalty is

    R = (1/2) * mean_i ||J(x_i)||_F^2,     loss = cross_entropy + lambda_JR * R.

Computing J exactly costs C backward passes. The paper's Algorithm 1 draws v uniformly on the unit
sphere in R^C instead; because E[v v^T] = I / C,

    E_v ||v^T J||^2 = Tr(J^T E[v v^T] J) = ||J||_F^2 / C,

so C * ||v^T J||^2 is an unbiased estimate of ||J||_F^2 from one vector-Jacobian product (the paper's
eq. 8 drops this factor C; its eq. 7 and Algorithm 1 keep it, and so does this module). The product is
taken with create_graph=True, so the penalty is differentiable in the parameters (double backprop).

Caveat: layers that mix examples (BatchNorm in training mode) make v^T J include cross-example terms;
the estimate is then of the batch Jacobian, as in the reference implementation.

Usage in any training loop::

    reg = JacobianReg(n_proj=1)
    x.requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits, y) + lam * reg(x, logits)
"""

from __future__ import annotations

import torch
from torch import nn


class JacobianReg(nn.Module):
    """The paper's penalty (1/2) * mean_i ||J(x_i)||_F^2 as a drop-in loss term.

    Args:
        n_proj: number of random projections per example (the paper finds 1 enough). None, or -1
            as in the reference code, computes the penalty exactly with one pass per class.
    """

    def __init__(self, n_proj: int | None = 1):
        super().__init__()
        self.n_proj = _check_n_proj(n_proj)

    def forward(
        self, x: torch.Tensor, logits: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return the scalar penalty for a batch.

        Args:
            x: the batch the model saw; must have requires_grad=True before `logits` were computed.
            logits: the model's output for `x`, shape B x C.
            generator: optional torch.Generator (on the logits' device) for reproducible projections.
        """
        sq_norms = frobenius_sq(x, logits, n_proj=self.n_proj, generator=generator)
        return 0.5 * sq_norms.mean()

    def extra_repr(self) -> str:
        return f"n_proj={'exact' if self.n_proj is None else self.n_proj}"


def frobenius_sq(
    x: torch.Tensor,
    logits: torch.Tensor,
    *,
    n_proj: int | None = 1,
    generator: torch.Generator | None = None,
    create_graph: bool | None = None,
) -> torch.Tensor:
    """Per-example ||J(x_i)||_F^2, exact (n_proj=None) or estimated with n_proj random projections.

    Args:
        x: input with requires_grad=True, first dimension B.
        logits: B x C output computed from `x`.
        n_proj: projections per example, or None for the exact value (C one-hot projections).
        generator: optional generator for the random directions.
        create_graph: keep the result differentiable in the parameters; defaults to whether grad
            mode is on, so evaluation under torch.no_grad-free code does not build a graph needlessly.

    Returns:
        Tensor of shape B (differentiable when create_graph is true).
    """
    _check_inputs(x, logits)
    n_proj = _check_n_proj(n_proj)
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    batch, classes = logits.shape
    if n_proj is None:
        eye = torch.eye(classes, device=logits.device, dtype=logits.dtype)
        directions = eye.unsqueeze(1).expand(classes, batch, classes)
        scale = 1.0
    else:
        directions = torch.randn(
            n_proj, batch, classes, device=logits.device, dtype=logits.dtype, generator=generator
        )
        directions = directions / directions.norm(dim=2, keepdim=True)
        scale = classes / n_proj
    total = logits.new_zeros(batch)
    for k, v in enumerate(directions):
        last = k == len(directions) - 1
        (grad_x,) = torch.autograd.grad(
            logits, x, grad_outputs=v, retain_graph=create_graph or not last,
            create_graph=create_graph, allow_unused=True,
        )  # fmt: skip
        if grad_x is None:
            raise ValueError("logits do not depend on x: compute logits = model(x) from this x, not a detached copy")
        total = total + grad_x.pow(2).reshape(batch, -1).sum(dim=1)
    return scale * total


def jacobian_norm(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """Exact per-example ||J(x_i)||_F of `model` at `x` (shape B), for evaluation.

    The model is used as it is (call model.eval() first for dropout-free numbers); its parameters'
    .grad are left untouched.
    """
    results = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(chunk)
            sq = frobenius_sq(chunk, logits, n_proj=None, create_graph=False)
        results.append(sq.detach().sqrt())
    if not results:
        return x.new_zeros(0)
    return torch.cat(results)


def _check_n_proj(n_proj: int | None) -> int | None:
    """-1 means exact, as in the reference code; otherwise a positive integer or None."""
    if n_proj == -1:
        return None
    if n_proj is not None and (not isinstance(n_proj, int) or isinstance(n_proj, bool) or n_proj < 1):
        raise ValueError(f"n_proj must be a positive integer, None or -1, got {n_proj!r}")
    return n_proj


def _check_inputs(x: torch.Tensor, logits: torch.Tensor) -> None:
    if not x.requires_grad:
        raise ValueError(
            "x does not require grad: call x.requires_grad_(True) before computing logits = model(x)"
        )
    if logits.dim() != 2:
        raise ValueError(f"logits must be B x C, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("the Jacobian penalty needs at least 2 output classes")
    if logits.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but logits have {logits.shape[0]}")
    if not logits.requires_grad:
        raise ValueError(
            "logits do not require grad: compute them from x with grad mode on (not under torch.no_grad)"
        )
