"""robench's own engine: attacks robench runs itself because no maintained library draws their randomness per
example. First, Square (Andriushchenko et al. 2020), L-infinity, margin loss, one restart: the algorithm of
AutoAttack's and torchattacks' Square (same initialization by vertical stripes, same schedule of square
sizes, same acceptance rule), with one change: every random draw (the stripes' signs, each iteration's
square position and signs) comes from the example's own generator, seeded from (seed, example index).
torchattacks draws one square position per iteration for the whole batch, so an example's outcome there
depends on which others share its call, and the cascade must run Square on whole chunks of 100 images,
attacking examples APGD already broke. Here the outcome depends on the example alone: the cascade hands
Square its survivors only.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RobenchError
from .failure import margins

NORMS = {"Linf": "linf"}


class Square:
    """Square Attack, L-infinity, per-example randomness (see the module docstring).

    Args:
        norm: "Linf" (the only one implemented here; torchattacks' Square covers L2).
        n_queries: iterations (one forward pass each, on the examples not yet broken).
        p_init: initial fraction of pixels a square covers.
        loss: "margin" (the only one implemented: AutoAttack's default).
        resc_schedule: rescale the square-size schedule to n_queries (AutoAttack's default).
        progress_window: 0 (AutoAttack's Square: every example gets all n_queries), or an adaptive budget in
            the spirit of A³ (Liu et al. 2022): every `progress_window` queries an example still robust is
            dropped when, at `progress_slack` times the rate its margin fell over the last window, it would
            still not reach 0 within the queries left. Square's squares shrink as it goes, so its rate
            rarely rises: such examples are the ones that would have spent the whole budget unbroken.
            Until its drop an example's path is the full attack's (same draws): what this Square breaks,
            the full one breaks too.
        progress_slack: the factor on that rate (larger: fewer drops).
    """

    def __init__(self, norm: str = "Linf", n_queries: int = 5000, p_init: float = 0.8, loss: str = "margin",
                 resc_schedule: bool = True, progress_window: int = 0, progress_slack: float = 2.0):  # fmt: skip
        if norm not in NORMS or loss != "margin":
            raise ValueError("robench's Square implements norm 'Linf' with the 'margin' loss")
        if not (isinstance(n_queries, int) and n_queries >= 1 and 0 < p_init <= 1):
            raise ValueError("n_queries must be >= 1 and p_init in (0, 1]")
        if not (isinstance(progress_window, int) and progress_window >= 0 and progress_slack > 0):
            raise ValueError("progress_window must be >= 0 (0: no adaptive budget) and progress_slack > 0")
        self.n_queries, self.p_init, self.resc_schedule = n_queries, float(p_init), resc_schedule
        self.progress_window, self.progress_slack = progress_window, float(progress_slack)
        self.queries: torch.Tensor | None = None  # after a call: the queries each example was given
        # Set `record = True` to keep every example's best margin after each query (n, n_queries + 1) in
        # `margin_history` (benchmarks/bench_square_budget.py replays drop rules on those paths).
        self.record, self.margin_history = False, None

    def p_selection(self, it: int) -> float:
        """AutoAttack's schedule of the fraction p, halving at fixed iterations (rescaled to n_queries)."""
        if self.resc_schedule:
            it = int(it / self.n_queries * 10000)
        for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                               (6000, 128), (8000, 256)):  # fmt: skip
            if it <= bound:
                return self.p_init / divisor
        return self.p_init / 512

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 generators: list[np.random.Generator]) -> torch.Tensor:  # fmt: skip
        """The best point found per example (its adversarial where one was found)."""
        n, (c, h, w) = len(x), x.shape[1:]
        # Each example's draws, made up front from its own generator: stripes, then per iteration two
        # position uniforms and c signs. The outcome of an example depends on these and itself alone.
        stripes = torch.from_numpy(np.stack([g.random((c, 1, w)) for g in generators]) if n else np.zeros((0, c, 1, w)))
        draws = torch.from_numpy(np.stack([g.random((self.n_queries, 2 + c)) for g in generators]) if n
                                 else np.zeros((0, self.n_queries, 2 + c)))  # fmt: skip
        sign = lambda u: torch.sign(2 * u - 1).to(x.dtype).to(x.device)  # noqa: E731 - torchattacks' random_choice
        with torch.no_grad():
            x_best = torch.clamp(x + eps * sign(stripes), 0.0, 1.0)
            margin_min = margins(model(x_best), y)
            hh, ww = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
            dropped = torch.zeros(n, dtype=torch.bool, device=x.device)
            self.queries = torch.zeros(n, dtype=torch.long)
            window_start = margin_min.clone()
            if self.record:
                self.margin_history = margin_min.cpu()[:, None].repeat(1, self.n_queries + 1)
            for it in range(self.n_queries):
                if self.progress_window and it > 0 and it % self.progress_window == 0:
                    dropped |= self._stalled(margin_min, window_start, it)
                    window_start = margin_min.clone()
                alive = ((margin_min > 0) & ~dropped).nonzero().flatten()
                if len(alive) == 0:
                    break
                self.queries[alive.cpu()] += 1
                s = max(int(round(math.sqrt(self.p_selection(it) * c * h * w / c))), 1)
                row = draws[alive.cpu(), it]
                vh = (row[:, 0] * (h - s)).long().to(x.device)  # as torchattacks' random_int(0, h - s)
                vw = (row[:, 1] * (w - s)).long().to(x.device)
                inside = (((hh >= vh[:, None]) & (hh < vh[:, None] + s))[:, :, None]
                          & ((ww >= vw[:, None]) & (ww < vw[:, None] + s))[:, None, :])  # fmt: skip
                window = inside[:, None].to(x.dtype) * (2 * eps * sign(row[:, 2:]))[:, :, None, None]
                x_curr = x[alive]
                x_new = torch.clamp(torch.min(torch.max(x_best[alive] + window, x_curr - eps), x_curr + eps), 0.0, 1.0)
                margin = margins(model(x_new), y[alive])
                better = margin < margin_min[alive]  # the margin is the loss: improved, or misclassified
                margin_min[alive] = torch.where(better, margin, margin_min[alive])
                x_best[alive] = torch.where(better[:, None, None, None], x_new, x_best[alive])
                if self.record:
                    self.margin_history[:, it + 1] = margin_min.cpu()
            if self.record:  # the queries not made (every example broken or dropped): the margin stays
                done = int(self.queries.max()) if n else 0
                self.margin_history[:, done + 1 :] = margin_min.cpu()[:, None]
        return x_best

    def replay(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(broken, queries given) per example had this Square's budget run on the paths of a full Square's
        `margin_history` with the same draws (an adaptive run's path is the full run's until its drop):
        one full run prices every drop rule (benchmarks/bench_square_budget.py)."""
        n = history.shape[0]
        hit = history[:, 1:] <= 0
        broken_at = torch.where(hit.any(1), hit.float().argmax(1) + 1, self.n_queries + 1)
        broken_at[history[:, 0] <= 0] = 0
        drop_at = torch.full((n,), self.n_queries + 1)
        checks = range(self.progress_window, self.n_queries, self.progress_window) if self.progress_window else ()
        for it in checks:
            stalled = self._stalled(history[:, it], history[:, it - self.progress_window], it)
            drop_at[stalled & (drop_at > self.n_queries)] = it
        return broken_at < drop_at, torch.minimum(torch.minimum(broken_at, drop_at), torch.tensor(self.n_queries))

    def _stalled(self, margin: torch.Tensor, window_start: torch.Tensor, it: int) -> torch.Tensor:
        """Examples still robust that would not reach margin 0 in the queries left even at `progress_slack`
        times the rate of the last window (each example judged on its own path alone)."""
        rate = (window_start - margin).clamp(min=0) / self.progress_window
        return (margin > 0) & (margin > self.progress_slack * rate * (self.n_queries - it))


CLASSES = {"Square": Square}


def check_params(classes: dict, what: str, name: Any, params: dict, where: str) -> type:
    """The class `name` of `classes`, with `params` checked against its constructor's signature and defaults'
    types (one-line errors); shared by robench's attacks and its certifications (`certify_engine`)."""
    from .specs import _check_type

    cls = classes.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RobenchError(f"{where}: unknown robench {what} class {name!r} (robench runs: {', '.join(classes)})")
    signature = inspect.signature(cls.__init__).parameters
    bad = sorted(set(params) - set(signature) - {"self"})
    if bad:
        raise RobenchError(f"{where}: {name} takes no parameter {bad[0]!r}")
    for key, value in params.items():
        _check_type(value, signature[key].default, f"{where}: {name} parameter {key!r}")
    return cls


def check_class(name: Any, params: dict, norm: Any, where: str) -> str:
    """Validate a robench-engine spec against the class's signature; returns its kind ("fixed")."""
    cls = check_params(CLASSES, "attack", name, params, where)
    if NORMS.get(params.get("norm", "Linf")) != norm:
        raise RobenchError(f"{where}: norm {norm!r} does not match {name}'s norm {params.get('norm', 'Linf')!r}")
    try:
        cls(**params)
    except ValueError as exc:
        raise RobenchError(f"{where}: {name}: {exc}") from None
    return "fixed"


def adversarials(spec: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *,
                 seed: int, indices: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The attack's points (unchecked: the caller re-checks each), randomness per example."""
    from .foolbox_engine import example_generators

    attack = CLASSES[spec.class_name](**spec.params)
    return attack(model, images, labels, float(eps), example_generators(seed, indices, len(labels), stream=7)).detach()
