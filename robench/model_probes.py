"""What AutoAttack checks on a model before attacking it, measured once per evaluation.

Gradient attacks give an upper bound on robust accuracy only when their gradients mean something.
Croce & Hein ship checks for the classic ways they do not (autoattack/checks.py); robench measures the
same facts on the first PROBE_N test images and stores them with every row of the evaluation (the
`model_checks` column, JSON), so `robench.checks` can flag the rows they concern:

- randomized: outputs that change between identical forward passes (noise layers, dropout left on).
  Every gradient is then one random draw, and so is the re-check of an adversarial.
- zero_gradient_share: examples whose cross-entropy input gradient is exactly zero (rounding or other
  piecewise-constant preprocessing, or a softmax saturated in float32). Gradient attacks cannot move them.
- probabilities: outputs that are a probability distribution, not logits; cross-entropy on them is
  the wrong loss and its gradients are squashed.
- classes: the number of outputs; the DLR loss needs 3 or more, targeted DLR 4 or more.
- gradient_in_forward: calls into autograd (grad, backward) during one forward pass, a model that
  runs an optimization of its own when called (a "dynamic" defense): attacks differentiate through it
  only as far as autograd lets them.

The thresholds follow AutoAttack's: a change of the L2-normalized outputs above RANDOM_TOL, any exact
zero gradient, outputs in [0, 1] summing to 1 within PROBABILITY_TOL.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a probe runs: reading model_checks (`from_json`) stays torch-free
    import torch
    from torch import nn

PROBE_N = 100
PASSES = 5
RANDOM_TOL = 1e-4
PROBABILITY_TOL = 1e-5
AUTOGRAD_ENTRY_POINTS = ("grad", "backward", "_make_grads")


def probe_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The facts above on the first PROBE_N of (x, y); the model is left in eval mode, as attacks see it."""
    import torch

    model.eval()
    x, y = x[:PROBE_N], y[:PROBE_N]
    with torch.no_grad():
        outputs = [model(x).float() for _ in range(PASSES)]
    unit = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outputs]
    change = max((unit[i] - unit[j]).norm(dim=1).max().item() for i in range(PASSES) for j in range(i + 1, PASSES))
    predictions = torch.stack([o.argmax(1) for o in outputs])
    flips = int((predictions != predictions[0]).any(0).sum())
    first = outputs[0]
    probabilities = bool(first.max() < 1 + PROBABILITY_TOL and first.min() > -PROBABILITY_TOL
                         and ((first.sum(1) - 1).abs() < PROBABILITY_TOL).all())  # fmt: skip
    return {
        "n": len(y),
        "randomized": bool(change > RANDOM_TOL or flips > 0),
        "output_change": round(float(change), 6),
        "prediction_flips": flips,
        "zero_gradient_share": zero_gradient_share(model, x, y),
        "probabilities": probabilities,
        "classes": int(first.shape[1]),
        "gradient_in_forward": autograd_calls_in_forward(model, x[:1]),
    }


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of examples whose cross-entropy gradient with respect to the input is exactly zero."""
    import torch
    import torch.nn.functional as F

    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:  # the output does not depend on the input through autograd at all
        return 1.0
    return float((grad.flatten(1).abs().sum(1) == 0).double().mean())


def autograd_calls_in_forward(model: nn.Module, x: torch.Tensor) -> int:
    """How often one forward pass enters torch.autograd's grad or backward (AutoAttack's check_dynamic)."""
    import torch

    calls = 0

    def trace(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_name in AUTOGRAD_ENTRY_POINTS and "autograd" in frame.f_code.co_filename:
            calls += 1
        return None

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        with torch.no_grad():
            model(x)
    finally:
        sys.settrace(previous)
    return calls


def as_json(probes: dict[str, Any]) -> str:
    return json.dumps(probes, sort_keys=True, separators=(",", ":"))


def from_json(text: Any) -> dict[str, Any] | None:
    """A row's model_checks, or None when it has none (rows written before robench measured them)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
