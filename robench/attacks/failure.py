"""Indicators of attack failure (Pintor et al., NeurIPS 2022), read from a gradient attack's own path.

A gradient attack that leaves an example robust may have failed rather than met a robust example. The
signs are in its path, which neither Foolbox's PGD nor torchattacks' APGD exposes; `PathTracer` wraps the
model the attack sees and records, for every example, the margin (true-class logit minus the largest
other logit; negative = misclassified) at every point the attack evaluates, and whether the input
gradient at its first point is exactly zero. From those, per example attacked (clean-correct):

- silent_success: a point on the path was adversarial (misclassified, inside the ε ball and the box) but
  the attack returned a point that is not. robench returns that point instead (re-checked like any
  other), so the outcome is right; the indicator says the attack's own bookkeeping was not.
- unavailable_gradients: the input gradient at the attack's first point is exactly zero (rounding,
  a saturated softmax, a non-differentiable layer): the attack cannot move the example.
- incomplete: the example stays robust and the attack was still gaining at its end: the best margin of the
  last TAIL of its points improved on the best before them by more than INCOMPLETE_GAIN of all the
  progress it made. More steps would likely break more.
- non_converging: the example stays robust and the attack does not settle: over the second half of its
  path, the margin climbs back (summed increases between consecutive points) by more than
  NON_CONVERGING_GAP of all the progress it made (a step too large bounces across the ball). Pintor et
  al. measure the spread across restarts; robench's attacks run one start, so the spread along the
  single path stands in for it.

Each is stored per row as a share of the row's n images (`attack_failure`, JSON: points of robust
accuracy at stake; `attacked` says how many examples the attack ran on) and flagged by
`robench.checks` above FLAG_SHARE. Thresholds were set on the demo's LeNet' models so that the shipped
PGD-40 fires none while PGD with 2 steps (incomplete) and with a 100x step (silent success,
non-convergence) fire (tests/test_attack_failure.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .failure_rows import FLAG_SHARE, INDICATORS, as_json, from_json, merge, per_row  # noqa: F401 - public here
from .verify import within_ball

TAIL = 0.1  # the end of a path: its last 10% of points (at least one)
INCOMPLETE_GAIN = 0.05
NON_CONVERGING_GAP = 0.25


class PathTracer(nn.Module):
    """The model as an attack sees it, recording each example's path (see the module docstring).

    Args:
        model: the model under attack.
        images, labels: the attack call's clean examples.
        eps: the ball's radius in `norm` ("linf" or "l2"); the path's adversarial points must lie inside.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str):
        super().__init__()
        self.model, self.images, self.labels, self.eps, self.norm = model, images, labels, float(eps), norm
        self.rows: torch.Tensor | None = None  # which examples the forwards of the current run carry
        self.run = 0
        self.records: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (run, example indices, margins)
        self.first_grad_zero = torch.full((len(labels),), -1, dtype=torch.int8)  # -1: no gradient seen yet
        self.found = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        self.adversarial = images.detach().clone()

    def begin_run(self, rows: torch.Tensor | list[int] | None) -> None:
        """The forwards that follow carry these examples (indices into `images`), in this order; a new run
        (a restart, another target) starts its own path."""
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=self.labels.device)
        self.run += 1

    def _rows_of(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.rows is not None and len(self.rows) == len(x):
            return self.rows
        if self.rows is None and len(x) == len(self.labels):
            return torch.arange(len(x), device=self.labels.device)
        return None  # a batch the tracer cannot place: not traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        rows = self._rows_of(x)
        if rows is None:
            return out
        with torch.no_grad():
            margin = margins(out.detach().float(), self.labels[rows])
            self.records.append((self.run, rows.cpu(), margin.cpu()))
            self._keep_adversarial(x.detach(), rows, margin)
        if x.requires_grad and torch.is_grad_enabled():
            fresh = (self.first_grad_zero[rows.cpu()] < 0).to(x.device)
            if fresh.any():
                x.register_hook(lambda g, rows=rows, fresh=fresh: self._record_gradient(g, rows, fresh))
        return out

    def _record_gradient(self, grad: torch.Tensor, rows: torch.Tensor, fresh: torch.Tensor) -> None:
        zero = (grad.detach().flatten(1) == 0).all(1)
        idx = rows[fresh].cpu()
        keep = self.first_grad_zero[idx] < 0  # the first gradient of each example counts
        self.first_grad_zero[idx[keep]] = zero[fresh].cpu()[keep].to(torch.int8)

    def _keep_adversarial(self, x: torch.Tensor, rows: torch.Tensor, margin: torch.Tensor) -> None:
        new = (margin < 0) & ~self.found[rows]
        if not new.any():
            return
        take = new & within_ball(self.images[rows], x, self.eps, self.norm)
        self.found[rows[take]] = True
        self.adversarial[rows[take]] = x[take].to(self.adversarial.dtype)

    def indicators(self, attacked: torch.Tensor, returned_broken: torch.Tensor, path_broken: torch.Tensor) -> dict:
        """Shares of the attacked examples showing each indicator (see the module docstring).

        Args:
            attacked: bool (N,), the examples the attack was run on (clean-correct).
            returned_broken: the attack's returned point passed the re-check.
            path_broken: the path's adversarial point passed the re-check.
        """
        attacked, returned_broken, path_broken = (t.cpu().bool() for t in (attacked, returned_broken, path_broken))
        paths = self._paths()
        n = int(attacked.sum())
        counts = dict.fromkeys(INDICATORS, 0)
        counts["silent_success"] = int((attacked & path_broken & ~returned_broken).sum())
        counts["unavailable_gradients"] = int((attacked & (self.first_grad_zero == 1)).sum())
        for i in attacked.nonzero().flatten().tolist():
            m = paths.get(i)
            if m is None or len(m) < 2 or returned_broken[i] or path_broken[i]:
                continue
            tail = max(1, math.ceil(TAIL * len(m)))
            progress = max(m[0] - min(m), 1e-12)
            counts["incomplete"] += int(min(m[:-tail]) - min(m[-tail:]) > INCOMPLETE_GAIN * progress)
            second_half = m[len(m) // 2 :]
            backward = sum(max(0.0, b - a) for a, b in zip(second_half, second_half[1:]))
            counts["non_converging"] += int(backward > NON_CONVERGING_GAP * progress and m[0] - min(m) > 1e-6)
        shares = {k: round(v / n, 6) if n else 0.0 for k, v in counts.items()}
        return {"n": n, **shares}

    def _paths(self) -> dict[int, list[float]]:
        """Each example's margins along its most successful run (the one reaching the lowest margin): a
        targeted attack's runs toward unlikely classes make little progress on the untargeted margin and
        say nothing about whether the attack converged. Foolbox's attacks evaluate their returned point;
        APGD returns the clean image where it failed, so returned points are not added."""
        runs: dict[int, dict[int, list[float]]] = {}
        for run, rows, margins in self.records:
            for i, m in zip(rows.tolist(), margins.tolist()):
                runs.setdefault(i, {}).setdefault(run, []).append(m)
        return {i: min(by_run.values(), key=min) for i, by_run in runs.items()}


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other logit: < 0 where the point is misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], -math.inf).amax(1)
    return true - other
