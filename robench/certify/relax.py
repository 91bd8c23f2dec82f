"""Linear relaxations of ReLU, Tanh and max-pooling: the one place where CROWN gives up exactness.

Every function here takes a linear function of a nonlinearity's output, `lA . y` with lA of shape
(B, S, *out_shape), and the interval [l, u] of the nonlinearity's input (B, *in_shape), and returns
(lA', c) such that lA . y >= lA' . z + c for every input z in [l, u]: a lower bound, as CROWN's backward
pass needs (Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General Activation
Functions", Sec. 3). Where lA is positive the nonlinearity's lower linear bound is used, where negative its
upper one; upper bounds of a quantity are lower bounds of its negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _combine(lA, lower_slope, lower_icpt, upper_slope, upper_icpt):
    """lA' and c from per-neuron lower/upper lines a z + b, each (B, *shape).

    lA' = lA a_u + max(lA, 0) (a_l - a_u) picks a_l where lA >= 0 and a_u elsewhere with one clamp; the
    constants are batched matrix products, so no (B, S, n) product is held for them."""
    pos = lA.clamp(min=0)
    new = lA * upper_slope.unsqueeze(1) + pos * (lower_slope - upper_slope).unsqueeze(1)
    const = _dot(lA, upper_icpt) + _dot(pos, lower_icpt - upper_icpt)
    return new, const


def _dot(lA: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, *shape) . (B, *shape) -> (B, S)."""
    return torch.bmm(lA.flatten(2), v.flatten(1).unsqueeze(2)).squeeze(2)


def relu_backward(lA: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """CROWN's ReLU relaxation: stable neurons are exact; an unstable one (l < 0 < u) is bounded above by the
    chord u (z - l) / (u - l) and below by 0 or z, whichever has the smaller area (slope 1 when u > -l):
    the "adaptive" lower slope of Zhang et al. (2018), which is also DeepPoly's choice (Singh et al. 2019)."""
    active, unstable = lower >= 0, (lower < 0) & (upper > 0)
    width = (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
    one, zero = torch.ones_like(lower), torch.zeros_like(lower)
    upper_slope = torch.where(active, one, torch.where(unstable, upper / width, zero))
    upper_icpt = torch.where(unstable, -lower * upper / width, zero)
    lower_slope = torch.where(active, one, torch.where(unstable & (upper > -lower), one, zero))
    return _combine(lA, lower_slope, zero, upper_slope, upper_icpt)


def tanh_lines(lower: torch.Tensor, upper: torch.Tensor):
    """Sound lines a_l z + b_l <= tanh z <= a_u z + b_u on [l, u], as (a_l, b_l, a_u, b_u).

    tanh is convex on z <= 0 and concave on z >= 0. Where [l, u] lies in one of those halves, the chord is
    the upper (convex) or lower (concave) line and the tangent at the midpoint the other, as in CROWN's
    general-activation bounds. Otherwise (an interval across 0, or narrower than 1e-3, where a chord's slope
    loses digits) both lines get the slope k = min(tanh'(l), tanh'(u)): tanh' is largest at 0 and falls off
    on both sides, so k is tanh's smallest slope on [l, u], tanh z - k z is nondecreasing there, and the
    lines through (l, tanh l) and (u, tanh u) with slope k bound tanh from below and above. Looser than
    CROWN's tangent search for intervals across 0, but sound by that one-line argument.
    """
    t_l, t_u = torch.tanh(lower), torch.tanh(upper)
    k = torch.minimum(1 - t_l**2, 1 - t_u**2)
    par_lo, par_up = t_l - k * lower, t_u - k * upper
    wide = (upper - lower) > 1e-3
    chord = (t_u - t_l) / torch.where(wide, upper - lower, torch.ones_like(lower))
    chord_icpt = t_l - chord * lower
    mid = (lower + upper) / 2
    t_m = torch.tanh(mid)
    tangent, tangent_icpt = 1 - t_m**2, t_m - (1 - t_m**2) * mid
    convex, concave = wide & (upper <= 0), wide & (lower >= 0)
    a_l = torch.where(convex, tangent, torch.where(concave, chord, k))
    b_l = torch.where(convex, tangent_icpt, torch.where(concave, chord_icpt, par_lo))
    a_u = torch.where(convex, chord, torch.where(concave, tangent, k))
    b_u = torch.where(convex, chord_icpt, torch.where(concave, tangent_icpt, par_up))
    return a_l, b_l, a_u, b_u


def tanh_backward(lA: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """Tanh through `tanh_lines`."""
    a_l, b_l, a_u, b_u = tanh_lines(lower, upper)
    return _combine(lA, a_l, b_l, a_u, b_u)


def _windows(t: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, k*k, L): each pooling window's entries, padding filled with -inf as max_pool2d does."""
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    padding, dilation = _pair(pool.padding), _pair(pool.dilation)
    padded = F.pad(t, (padding[1], padding[1], padding[0], padding[0]), value=float("-inf"))
    cols = F.unfold(padded, kernel, dilation=dilation, stride=stride)
    return cols.view(t.shape[0], t.shape[1], kernel[0] * kernel[1], -1)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def maxpool_backward(lA: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, pool: nn.MaxPool2d):
    """Max-pooling as DeepPoly relaxes it (Singh et al. 2019, "An abstract domain for certifying neural
    networks", Sec. 4): per window, with i* the entry of largest lower bound, y >= z_{i*} always; y <= z_{i*}
    when l_{i*} >= u_j for every other entry j (then y = z_{i*} exactly), else y <= max_j u_j (a constant).
    Windows may overlap: the transpose of the window extraction (fold) adds their contributions.
    """
    batch, specs = lA.shape[:2]
    channels, height, width = lower.shape[1:]
    low_w, up_w = _windows(lower, pool), _windows(upper, pool)  # (B, C, K, L)
    onehot = torch.zeros_like(low_w).scatter_(2, low_w.argmax(2, keepdim=True), 1.0)
    others_max = up_w.masked_fill(onehot.bool(), float("-inf")).amax(2)  # (B, C, L)
    exact = low_w.amax(2) >= others_max
    upper_const = torch.where(exact, torch.zeros_like(others_max), up_w.amax(2))
    lA_w = lA.reshape(batch, specs, channels, 1, -1)  # (B, S, C, 1, L)
    neg = lA_w.clamp(max=0)
    coef = (lA_w - neg) * onehot.unsqueeze(1) + neg * (onehot * exact.unsqueeze(2)).unsqueeze(1)
    const = _dot(neg.squeeze(3), upper_const)
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    padding, dilation = _pair(pool.padding), _pair(pool.dilation)
    size = (height + 2 * padding[0], width + 2 * padding[1])
    folded = F.fold(coef.reshape(batch * specs, channels * coef.shape[3], -1), size, kernel,
                    dilation=dilation, stride=stride)  # fmt: skip
    folded = folded[:, :, padding[0] : padding[0] + height, padding[1] : padding[1] + width]
    return folded.reshape(batch, specs, channels, height, width), const
