"""FAB-T once per example and target, for every ε of a cascade's grid: the same outcomes, a fraction of the work.

FAB-T (`attacks/fab-t.toml`: torchattacks' FAB, multi-targeted, one restart) is a minimal-perturbation
attack run at a fixed ε. Its `perturb` runs the targets in order (the most likely wrong class first), each
on the examples the earlier targets did not break within ε, and returns the first target's point that
torchattacks counts as fooled with a size within ε. The single run of a target reads no ε and, with one
restart, draws nothing: the run an example gets for target k is the same at every ε. So the cascade
keeps, per example and target, the run's size and torchattacks' fooled flag (two numbers, not the
image), and at each ε replays `perturb`'s rule from them, running a target only where the rule reaches
it and no earlier ε already ran it. The point the rule picks is computed again (the same run) and
re-checked like every adversarial (`verify_adversarials`). On a grid of five ε this runs FAB-T's targets
about once per surviving example instead of once per ε (measured in docs/PERFORMANCE.md); the outcomes
equal running `fab-t` at each ε on its own (tests/test_autoattack.py).

Only where the run is deterministic: `AttackSpec.eps_free` (one restart, a deterministic model).
"""

from __future__ import annotations

from typing import Any

import torch

from .runners import frozen_parameters, searching_module
from .specs import AttackSpec
from .torchattacks_engine import target_count
from .verify import verify_adversarials


class FabTargets:
    """What FAB-T's target runs gave, per test image (rows: indices into the evaluation's first N, which
    are also the images' test-set indices) and target (columns): the point's size (NaN: not run yet) and
    whether torchattacks' check called it fooled."""

    def __init__(self, n: int):
        self.n = n
        self.size = self.fooled = None  # (n, classes - 1), once the model's class count is known

    def broken(self, spec: AttackSpec, fmodel: Any, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
               eps: float, *, seed: int, surrogate: Any = None) -> torch.Tensor:  # fmt: skip
        """Which of the images `rows` (indices into x) FAB-T breaks at ε, as `fixed_eps_outcomes` would
        find running it at ε alone. Bool (len(rows),)."""
        attacked = searching_module(spec, fmodel, surrogate, x[rows[:1]])
        limit = torch.tensor(eps, dtype=torch.float32)
        if self.size is None:
            with torch.no_grad():
                targets = target_count(spec, int(attacked(x[:1]).shape[-1]))  # FAB-T's n_target_classes
            self.size = torch.full((self.n, targets), float("nan"), dtype=torch.float32)
            self.fooled = torch.zeros((self.n, targets), dtype=torch.bool)
        with frozen_parameters(attacked), torch.enable_grad():
            for k in range(self.size.shape[1]):  # perturb's order: target k runs where no earlier one broke
                earlier = (self.fooled[rows, :k] & (self.size[rows, :k] <= limit)).any(1)
                need = rows[~earlier & torch.isnan(self.size[rows, k])]
                if len(need):
                    _, size, fooled = self._run(spec, attacked, x, y, need, k, seed)
                    self.size[need, k], self.fooled[need, k] = size.float().cpu(), fooled.cpu()
            hits = self.fooled[rows] & (self.size[rows] <= limit)
            first = torch.where(hits.any(1), hits.float().argmax(1), torch.full((len(rows),), -1))
            broken = torch.zeros(len(rows), dtype=torch.bool)
            for k in first.unique().tolist():
                if k < 0:
                    continue
                which = (first == k).nonzero().flatten()
                points, _, _ = self._run(spec, attacked, x, y, rows[which], k, seed)
                where = rows[which].to(x.device)
                broken[which] = verify_adversarials(fmodel, x[where], points, y[where], float(eps), spec.norm).cpu()
        return broken

    @staticmethod
    def _run(spec, attacked, x, y, rows: torch.Tensor, k: int, seed: int):
        from .torchattacks_engine import fab_target_run

        where = rows.to(x.device)
        return fab_target_run(spec, attacked, x[where], y[where], k + 2, seed=seed, indices=rows)
