"""Clean accuracy and exact mean test ||J||_F of every member of a StackedNet, in one pass each.

Per-epoch evaluation of 40 models one after another would cost a third of the side-by-side
training itself on a GPU; stacked, it is a few large batches. The numbers are those of
`metrics.clean_accuracy` and `metrics.mean_jacobian_norm` (eval mode: no dropout; exact norms from
the C one-hot vector-Jacobian products), for pixel and normalized units from the same gradients.
"""

from __future__ import annotations

import torch

from .data import to_unit_float

# Examples (members x images) per pass: the forward and the C backward passes of the norms hold
# about this many images' activations at once.
ROWS = {"cuda": (40_000, 8_000), "cpu": (4_000, 1_000)}


def accuracy_and_norms(stack, data: dict[str, torch.Tensor], norm_n: int, std: torch.Tensor):
    """(accuracy, mean pixel ||J||_F, mean normalized ||J||_F), each a list over the members.

    Args:
        stack: the StackedNet.
        data: the training dict (test_x uint8, test_y) on the stack's device.
        norm_n: the norms use the first norm_n test images (nan when 0).
        std: the input std (1 x C x 1 x 1): d/d normalized input = std * d/d pixel.
    """
    k = stack.k
    forward_rows, backward_rows = ROWS["cuda" if data["test_x"].device.type == "cuda" else "cpu"]
    test_x, test_y = data["test_x"], data["test_y"]
    correct = torch.zeros(k, dtype=torch.long, device=test_x.device)
    chunk = max(1, forward_rows // k)
    with torch.no_grad():
        for start in range(0, len(test_y), chunk):
            x = to_unit_float(test_x[start : start + chunk])
            logits = stack(x.unsqueeze(0).expand(k, *x.shape), None)
            correct += (logits.argmax(2) == test_y[start : start + chunk]).sum(1)
    accuracy = (correct.double() / max(1, len(test_y))).tolist() if len(test_y) else [float("nan")] * k
    if norm_n == 0:
        return accuracy, [float("nan")] * k, [float("nan")] * k
    pixel, normalized = [], []
    chunk = max(1, backward_rows // k)
    sums = torch.zeros(2, k, dtype=torch.float64, device=test_x.device)
    for start in range(0, norm_n, chunk):
        x = to_unit_float(test_x[start : min(norm_n, start + chunk)])
        x = x.unsqueeze(0).expand(k, *x.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = stack(x, None)
            classes = logits.shape[2]
            sq_pixel = torch.zeros(logits.shape[:2], device=x.device)
            sq_norm = torch.zeros(logits.shape[:2], device=x.device)
            for c in range(classes):
                (grad,) = torch.autograd.grad(logits[:, :, c].sum(), x, retain_graph=c < classes - 1)
                sq_pixel += grad.pow(2).flatten(2).sum(2)
                sq_norm += (grad * std).pow(2).flatten(2).sum(2)
        sums[0] += sq_pixel.sqrt().double().sum(1)
        sums[1] += sq_norm.sqrt().double().sum(1)
    pixel, normalized = (sums / norm_n).tolist()
    return accuracy, pixel, normalized
