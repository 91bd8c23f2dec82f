"""Option values written as text (KEY=V1,V2, NAME=N, seed lists) turned into typed values.

`robench train-many` and `robench reproduce mnist` share the --seeds grammar, so the parsers live
apart from either command; each bad value is a RobenchError with a one-line message naming the
option, which `cli.RobenchGroup` prints.
"""

from __future__ import annotations

from .errors import RobenchError

VARY_KEYS = ("jr", "jr_units", "nproj", "l2", "dropout", "adv_train", "adv_eps", "adv_steps", "adv_mix", "trades_beta", "igr")


def parse_vary(item: str) -> tuple[str, list]:
    """'jr=0,0.01' -> ('jr', [0.0, 0.01]), typed like the TrainConfig field."""
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not sep or key not in VARY_KEYS or not text:
        raise RobenchError(f"--vary {item!r}: write KEY=V1,V2 with KEY one of {', '.join(VARY_KEYS)}")
    values = []
    for word in text.split(","):
        word = word.strip()
        try:
            if key in ("adv_train", "jr_units"):
                values.append(None if word == "none" else word)
            elif key in ("nproj", "adv_steps"):
                values.append(int(word))
            else:
                values.append(float(word))
        except ValueError:
            raise RobenchError(f"--vary {key}: {word!r} is not a valid value") from None
    return key, values


def parse_seeds(text: str) -> tuple[int, ...] | int:
    """'0,1,2' -> those seeds; a lone 'N' -> N seeds (0..N-1), the option's meaning before lists
    ('0' is seed 0: zero seeds would be no study)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise RobenchError(f"--seeds takes integers like 0,1,2 (or a count N), got {text!r}")
    if len(parts) == 1:  # a count N, except 0, which can only mean seed 0 itself
        return (0,) if int(parts[0]) == 0 else int(parts[0])
    return tuple(int(p) for p in parts)


def parse_eps_grids(items: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    """('pgd=0,0.1,0.2', ...) -> {'pgd': (0.0, 0.1, 0.2), ...}: one attack's epsilon grid per item."""
    from .attacks import parse_eps

    grids = {}
    for item in items:
        name, _, values = item.partition("=")
        if not name.strip() or not values.strip():
            raise RobenchError(f"--eps takes NAME=LIST, e.g. pgd=0,0.1,0.2, got {item!r}")
        grids[name.strip()] = tuple(parse_eps(values))
    return grids


def parse_attack_n(items: tuple[str, ...]) -> dict[str, int]:
    """('cw=200', ...) -> {'cw': 200, ...}: a cap on one attack's test images per item."""
    caps = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise RobenchError(f"--attack-n takes NAME=N with N >= 1, got {item!r}")
        caps[name.strip()] = int(value)
    return caps

