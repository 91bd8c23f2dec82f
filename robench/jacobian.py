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

Units. J is taken with respect to whatever `x` is. robench models take pixels in [0, 1] and normalize
inside themselves (`robench.models.Normalize`), so the plain J is d logits / d pixel ("pixel" units,
what an attack's epsilon sees). The paper normalizes the data before the network (MNIST: mean 0.1307,
std 0.3081), so its J is d logits / d (normalized input) ("normalized" units). By the chain rule that
is the pixel Jacobian with each input channel's columns multiplied by that channel's std: on MNIST
||J||_normalized = 0.3081 ||J||_pixel, and lambda_JR in pixel units is 0.3081^2 = 0.0949 times lambda_JR
in normalized units. `input_scale` (broadcastable to x, e.g. std as 1 x C x 1 x 1) applies that factor.

Usage in any training loop::

    reg = JacobianReg(n_proj=1)
    x.requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits, y) + lam * reg(x, logits)

or, letting robench run the model and pick the cheapest way to the same numbers::

    logits, sq = logits_and_frobenius_sq(model, x, n_proj=1, generator=gen)
    loss = F.cross_entropy(logits, y) + lam * 0.5 * sq.mean()
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
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example ||J(x_i)||_F^2, exact (n_proj=None) or estimated with n_proj random projections.

    Args:
        x: input with requires_grad=True, first dimension B.
        logits: B x C output computed from `x`.
        n_proj: projections per example, or None for the exact value (C one-hot projections).
        generator: optional generator for the random directions.
        create_graph: keep the result differentiable in the parameters; defaults to whether grad
            mode is on, so evaluation under torch.no_grad-free code does not build a graph needlessly.
        input_scale: multiplies dz/dx before squaring (broadcast to x): the std per channel gives
            the Jacobian in normalized units (see the module docstring); None leaves x's units.

    Returns:
        Tensor of shape B (differentiable when create_graph is true).
    """
    _check_inputs(x, logits)
    n_proj = _check_n_proj(n_proj)
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    directions, scale = _directions(logits, n_proj, generator)
    total = logits.new_zeros(logits.shape[0])
    for k, v in enumerate(directions):
        last = k == len(directions) - 1
        (grad_x,) = torch.autograd.grad(
            logits, x, grad_outputs=v, retain_graph=create_graph or not last,
            create_graph=create_graph, allow_unused=True,
        )  # fmt: skip
        if grad_x is None:
            raise ValueError("logits do not depend on x: compute logits = model(x) from this x, not a detached copy")
        if input_scale is not None:
            grad_x = grad_x * input_scale
        total = total + grad_x.pow(2).reshape(len(x), -1).sum(dim=1)
    return scale * total


METHODS = ("auto", "autograd", "vmap")

# Upper bound on (vectors per vmap chunk) x (batch): the batched backward holds that many examples'
# activation gradients at once, so exact mode with many classes goes in chunks instead of at once.
_MAX_BATCHED_ROWS = 4096


def logits_and_frobenius_sq(
    model: nn.Module,
    x: torch.Tensor,
    *,
    n_proj: int | None = 1,
    generator: torch.Generator | None = None,
    create_graph: bool | None = None,
    method: str = "auto",
    input_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on `x` once; return its logits and the per-example ||J(x_i)||_F^2 of that very forward.

    The Jacobian is of the forward that gave the logits (same dropout mask, same BatchNorm batch),
    and the random directions are drawn after it exactly as `frobenius_sq` draws them, so a given
    generator state (and global seed, for dropout) gives the same numbers with every method.

    Methods:
        "autograd": the paper's Algorithm 1, one torch.autograd.grad per projection (`frobenius_sq`).
        "vmap": one torch.func.vjp of the model, its pullback vmapped over all projection vectors at
            once (exact mode: all C one-hot vectors), so K backward passes become one batched pass.
            torch.func cannot trace in-place buffer updates, so BatchNorm in training mode is refused.
        "auto": "vmap" for exact mode and n_proj > 1 on CUDA, "autograd" otherwise (and always for
            BatchNorm in training mode). Measured on a shared 2-core CPU (LeNet', one thread's CPU time,
            median of 7; wall-clock figures of benchmarks/bench_jr.py in docs/PERFORMANCE.md): vmap is
            slower on a CPU, where the batched backward runs as a few large, oddly-shaped oneDNN
            convolutions (exact training step 1.25 s vs 0.87 s at batch 64; exact evaluation at
            batch 500 4.7 s vs 3.6 s), and no faster for n_proj = 1 or 3 (within 5%). It wins on a
            CPU only for tiny batches (exact: 114 vs 174 ms at batch 8, even at batch 32), smaller
            than robench trains or evaluates with. On a GPU the C small backward passes are
            launch-bound and one batched pass should win; that choice is not yet measured there.

    A forward-over-reverse variant (torch.func.jvp of the parameter gradient instead of double
    backward) gives the same parameter gradients but is several times slower in the benchmark.

    Args:
        model: maps a batch `x` to B x C logits.
        x: the batch as the model sees it; it need not require grad (a leaf copy is made if needed).
        n_proj: projections per example, or None (or -1) for the exact value.
        generator: optional generator for the random directions.
        create_graph: keep the norms (and logits) differentiable in the parameters; defaults to
            whether grad mode is on. When false the logits come back detached.
        method: "auto", "autograd" or "vmap".
        input_scale: as in `frobenius_sq` (the input std per channel: normalized units).

    Returns:
        (logits of shape B x C, squared norms of shape B).
    """
    n_proj = _check_n_proj(n_proj)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    if method == "auto":
        method = _auto_method(model, x, n_proj)
    if method == "vmap":
        return _logits_and_sq_vmap(model, x, n_proj, generator, create_graph, input_scale)
    return _logits_and_sq_autograd(model, x, n_proj, generator, create_graph, input_scale)


def _auto_method(model: nn.Module, x: torch.Tensor, n_proj: int | None) -> str:
    """The method "auto" stands for; see `logits_and_frobenius_sq` for the measurements behind it."""
    batched = n_proj != 1 and x.device.type == "cuda"
    return "vmap" if batched and not _updates_running_stats(model) else "autograd"


def _logits_and_sq_autograd(model, x, n_proj, generator, create_graph, input_scale=None):
    """Plain forward, then `frobenius_sq`: the reference path."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        sq = frobenius_sq(x, logits, n_proj=n_proj, generator=generator, create_graph=create_graph,
                          input_scale=input_scale)
    return (logits, sq) if create_graph else (logits.detach(), sq)


def _logits_and_sq_vmap(model, x, n_proj, generator, create_graph, input_scale=None):
    """torch.func.vjp runs the ordinary forward once (dropout draws its mask as usual) and returns
    its pullback; vmapping the pullback reuses that forward's saved tensors for every vector."""
    if _updates_running_stats(model):
        raise ValueError(
            "method 'vmap' cannot run a model with BatchNorm in training mode (torch.func does not "
            "trace running-statistics updates); use method 'auto' or 'autograd'"
        )
    # torch.func differentiates in x whatever the grad mode; the outer mode decides whether a graph
    # to the parameters is recorded (double backward) or not (evaluation).
    with torch.set_grad_enabled(create_graph):
        logits, pullback = torch.func.vjp(model, x)
        _check_logits(x, logits)
        directions, scale = _directions(logits, n_proj, generator)
        chunk = max(1, _MAX_BATCHED_ROWS // max(1, len(x)))
        (grads,) = torch.func.vmap(pullback, chunk_size=chunk)(directions)
        if input_scale is not None:
            grads = grads * input_scale
        sq = scale * grads.pow(2).reshape(len(directions), len(x), -1).sum(dim=2).sum(dim=0)
    return logits, sq


def _updates_running_stats(model: nn.Module) -> bool:
    """True when a forward would update BatchNorm running statistics (in-place buffer writes)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for m in model.modules()
    )


def _directions(logits: torch.Tensor, n_proj: int | None, generator) -> tuple[torch.Tensor, float]:
    """Projection vectors (K x B x C) and the factor that makes scale * sum_k ||v_k^T J||^2 estimate
    ||J||_F^2: the C one-hot vectors with factor 1, or n_proj unit-sphere draws with factor C / n_proj."""
    batch, classes = logits.shape
    if n_proj is None:
        eye = torch.eye(classes, device=logits.device, dtype=logits.dtype)
        return eye.unsqueeze(1).expand(classes, batch, classes), 1.0
    directions = torch.randn(n_proj, batch, classes, device=logits.device, dtype=logits.dtype, generator=generator)
    return directions / directions.norm(dim=2, keepdim=True), classes / n_proj


UNITS = ("pixel", "normalized")


def input_std(model: nn.Module) -> torch.Tensor | None:
    """The per-channel std (1 x C x 1 x 1) of the `Normalize` layer a robench model starts with, or
    None when the model does not normalize its input itself (its normalized units are then unknown)."""
    from .models import Normalize  # late: robench.jacobian itself needs torch alone

    first = model
    while isinstance(first, nn.Sequential) and len(first) > 0:
        first = first[0]
    if isinstance(first, Normalize):
        return first.std
    wrapped = getattr(model, "module", None)  # DistributedDataParallel, torch.compile
    return input_std(wrapped) if isinstance(wrapped, nn.Module) else None


def unit_scale(model: nn.Module, units: str) -> torch.Tensor | None:
    """The `input_scale` that gives the Jacobian of `model` in `units` ("pixel": None)."""
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    if units == "pixel":
        return None
    std = input_std(model)
    if std is None:
        raise ValueError(
            "units='normalized' needs the model's input normalization: start the model with "
            "robench.models.Normalize(mean, std), or use units='pixel'"
        )
    return std


def jacobian_norm(model: nn.Module, x: torch.Tensor, *, units: str = "pixel", batch_size: int = 500) -> torch.Tensor:
    """Exact per-example ||J(x_i)||_F of `model` at `x` (shape B), for evaluation.

    Args:
        model: takes pixels in [0, 1] (a robench model: normalization is its first layer).
        x: the images, in pixels.
        units: "pixel", d logits / d pixel (what attacks see); or "normalized", d logits / d
            (normalized input), the paper's convention, which needs the model's `Normalize` layer.
        batch_size: images per pass.

    The model is used as it is (call model.eval() first for dropout-free numbers); its parameters'
    .grad are left untouched. The C products go the cheapest way for the device (method "auto").
    """
    scale = unit_scale(model, units)
    results = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size].detach()
        _, sq = logits_and_frobenius_sq(model, chunk, n_proj=None, create_graph=False, input_scale=scale)
        results.append(sq.sqrt())
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
    _check_logits(x, logits)
    if not logits.requires_grad:
        raise ValueError(
            "logits do not require grad: compute them from x with grad mode on (not under torch.no_grad)"
        )


def _check_logits(x: torch.Tensor, logits: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be B x C, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("the Jacobian penalty needs at least 2 output classes")
    if logits.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but logits have {logits.shape[0]}")
