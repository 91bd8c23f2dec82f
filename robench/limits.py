"""The ranges robench's numbers must lie in, checked where a command starts and before any work.

A seed of 10^18 overflows inside torch's generators (robench derives per-epoch and per-example seeds
from it by arithmetic), `inf` as a learning rate trains a model of NaNs, and a count of 0 fails only
after an hour of training: each such value is refused here, in one line naming the option.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import RobenchError

# Seeds are multiplied by ~1e5 and offset by ~1e9 per epoch and rank (train.py), then given to
# torch.Generator.manual_seed; 2^31 keeps every derived seed well inside int64 and numpy's 2^32.
SEED_LIMIT = 2**31


def check_seed(option: str, value: Any) -> int:
    """An integer in [0, 2^31); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise RobenchError(f"{option} must be an integer in [0, 2^31), got {value}")
    return value


def check_finite(option: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:  # fmt: skip
    """A finite number, optionally within [low, high] (or (low, high] with low_open); returns it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}] and finite"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g} and finite"
        else:
            bounds = f" <= {high:g} and finite" if high is not None else " a finite number"
        raise RobenchError(f"{option} must be{bounds}, got {value}")
    return float(value)


def check_count(option: str, value: Any, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    """A whole number >= minimum (None allowed when `allow_none`); returns it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RobenchError(f"{option} must be an integer >= {minimum}, got {value}")
    return value
