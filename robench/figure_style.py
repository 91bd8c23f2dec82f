"""How robench's figures look, in one place: the rcParams, each defense's fixed style, paper-style
legend labels and titles.

A defense's colour, marker and line style come from the defense itself (which of L2, dropout, JR and
adversarial training it combines, and their strengths), never from its position among the curves,
so JR is the same blue in every figure of every report. The palette is Okabe & Ito's colour-blind-safe
eight (plus Paul Tol's wine for the ninth paper recipe); line style and marker separate the families
again for readers of a grey-scale print.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

RC_PARAMS = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "savefig.dpi": 300,
    "svg.fonttype": "none",  # text stays text in SVG
    "pdf.fonttype": 42,  # TrueType in PDF: editable, accepted by journals
}
FIGURE_FORMATS = ("png", "svg", "pdf")

# Components of a defense label, as TrainConfig.defense writes them ("adv=fgsm@0.1+jr=0.01+l2=0.0005").
_PART = re.compile(r"^(adv|jr|l2|dropout|igr)=(.+)$")
_AT_PART = re.compile(r"^(pgd-at)@(.+)$|^(trades)\((.+)\)@(.+)$")
# (colour, line style, marker) per family, for the paper's nine recipes and the single defenses.
FAMILY_STYLES: dict[tuple[str, ...], tuple[str, str, str]] = {
    (): ("#000000", "-", "o"),  # no defense
    ("l2",): ("#E69F00", "--", "^"),
    ("dropout",): ("#56B4E9", "--", "v"),
    ("dropout", "l2"): ("#009E73", "--", "s"),  # base
    ("jr",): ("#0072B2", "-", "D"),
    ("dropout", "jr", "l2"): ("#CC79A7", "-", "P"),  # base+jr (= all)
    ("adv",): ("#D55E00", ":", "X"),
    ("adv", "dropout", "l2"): ("#D55E00", "-.", "X"),  # base+adv
    ("adv", "dropout", "jr", "l2"): ("#882255", "-", "*"),  # base+jr+adv
    ("pgd-at",): ("#117733", "-", ">"),
    ("trades",): ("#999933", "-", "<"),
    ("igr",): ("#44AA99", "-", "h"),
    ("jr", "pgd-at"): ("#332288", "-", "p"),
}
_FALLBACK_COLORS = ("#F0E442", "#44AA99", "#999933", "#AA4499", "#332288", "#117733", "#88CCEE", "#DDCC77")
_FALLBACK_LINES = (":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_FALLBACK_MARKERS = ("h", "p", "<", ">", "8", "d")
# The strengths the paper uses; another strength keeps the family's style, with a lighter or darker tone.
PAPER_STRENGTHS = {"jr": "0.01", "l2": "0.0005", "dropout": "0.5"}


def _parts(defense: str) -> dict[str, str] | None:
    """{component: value} of a robench defense label, or None for a label robench did not write."""
    if defense == "none":
        return {}
    parts = {}
    for piece in str(defense).split("+"):
        match, at = _PART.match(piece), _AT_PART.match(piece)
        if match:
            key, value = match.group(1), match.group(2)
        elif at and at.group(1):
            key, value = "pgd-at", at.group(2)
        elif at:
            key, value = "trades", f"{at.group(4)}@{at.group(5)}"
        else:
            return None
        if key in parts:
            return None
        parts[key] = value
    return parts


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16)


def defense_style(defense: str) -> dict[str, object]:
    """Matplotlib keyword arguments (color, linestyle, marker) that belong to this defense everywhere."""
    parts = _parts(defense)
    family = tuple(sorted(parts)) if parts is not None else None
    if family in FAMILY_STYLES:
        color, line, marker = FAMILY_STYLES[family]
    else:
        key = _digest(json.dumps(family) if family is not None else f"label:{defense}")
        color = _FALLBACK_COLORS[key % len(_FALLBACK_COLORS)]
        line = _FALLBACK_LINES[(key // 8) % len(_FALLBACK_LINES)]
        marker = _FALLBACK_MARKERS[(key // 32) % len(_FALLBACK_MARKERS)]
    off_paper = parts is not None and any(
        re.sub(r"\(.*\)$", "", v) != PAPER_STRENGTHS.get(k, v) for k, v in parts.items() if k in PAPER_STRENGTHS
    )  # fmt: skip
    if off_paper or (parts is not None and any("(" in v for v in parts.values())):
        color = _shade(color, ((_digest(defense) % 7) - 3) / 6.0)  # a tone of its own, from the label
    return {"color": color, "linestyle": line, "marker": marker}


def _shade(color: str, amount: float) -> str:
    """`color` mixed toward white (amount > 0) or black (amount < 0) by |amount| in [0, 0.5]."""
    rgb = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    amount = max(-0.5, min(0.5, amount)) or 0.25
    target = 1.0 if amount > 0 else 0.0
    mixed = [c + (target - c) * abs(amount) for c in rgb]
    return "#" + "".join(f"{round(255 * c):02X}" for c in mixed)


def _number(text: str) -> str:
    """0.0005 -> 5e-4, 0.01 -> 0.01: the way papers write small hyper-parameters."""
    try:
        value = float(text)
    except ValueError:
        return text
    if value != 0 and abs(value) < 1e-3:
        exponent = math.floor(math.log10(abs(value)))
        return f"{value / 10**exponent:g}e{exponent}"
    return f"{value:g}"


def paper_label(defense: str) -> str:
    """A defense label as a paper writes it: 'no defense', 'JR λ=0.01', 'L2 5e-4 + dropout 0.5',
    'FGSM-AT ε=0.3'. A label robench did not write is returned as it is."""
    parts = _parts(defense)
    if parts is None:
        return str(defense)
    if not parts:
        return "no defense"
    words = []
    if "l2" in parts:
        words.append(f"L2 {_number(parts['l2'])}")
    if "dropout" in parts:
        words.append(f"dropout {_number(parts['dropout'])}")
    if "jr" in parts:
        value, _, notes = parts["jr"].partition("(")
        extra = "".join(f" ({n.rstrip(')')})" for n in ("(" + notes).split("(") if n) if notes else ""
        words.append(f"JR λ={_number(value)}" + extra.replace("(pixel)", "(pixel units)"))
    if "igr" in parts:
        value, _, notes = parts["igr"].partition("(")
        words.append(f"IGR λ={_number(value)}" + (" (pixel units)" if "pixel" in notes else ""))
    if "adv" in parts:
        method, _, eps = parts["adv"].partition("@")
        words.append(f"{method.upper()}-AT ε={_number(eps)}" if eps else f"{method.upper()}-AT")
    if "pgd-at" in parts:
        eps, _, steps = parts["pgd-at"].partition("(k=")
        words.append(f"PGD-AT ε={_number(eps)}" + (f" ({steps.rstrip(')')} steps)" if steps else ""))
    if "trades" in parts:
        beta, _, eps = parts["trades"].partition("@")
        words.append(f"TRADES β={_number(beta)} ε={_number(eps)}")
    return " + ".join(words)


NORM_SYMBOLS = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "imagenet": "ImageNet"}
ATTACK_NAMES = {"noise": "White noise", "fgsm": "FGSM", "pgd": "PGD", "pgd-l2": "PGD", "cw": "Carlini-Wagner",
                "ddn": "DDN", "square": "Square", "square-l2": "Square", "square-1k": "Square-1k",
                "square-pe": "Square", "square-pe-1k": "Square-1k"}  # fmt: skip


def attack_name(attack: str, params: str | None = None) -> str:
    """'PGD-40' (steps from the spec's parameters), 'FGSM', 'Worst case over attacks', ..."""
    if attack.startswith("worst_case"):
        return "Worst case over attacks"
    name = ATTACK_NAMES.get(attack, attack.upper() if len(attack) <= 6 else attack)
    try:
        steps = json.loads(params or "{}").get("params", {}).get("steps")
    except (ValueError, AttributeError):
        steps = None
    return f"{name}-{steps}" if isinstance(steps, int) and name in ("PGD",) else name


def figure_title(attack: str, norm: str, dataset: str, n: int | str, seeds: int, params: str | None = None) -> str:
    """'PGD-40 L∞ · MNIST · n=1000 · 5 seeds'."""
    seeds_text = f"{seeds} seed" + ("s" if seeds != 1 else "")
    return (f"{attack_name(attack, params)} {NORM_SYMBOLS.get(norm, norm)} · {DATASET_NAMES.get(dataset, dataset)} · "
            f"n={n} · {seeds_text}")  # fmt: skip


def parse_formats(text: str) -> tuple[str, ...]:
    """'png,svg' -> ('png', 'svg'); PNG is always written (the report embeds it)."""
    from .errors import RobenchError

    formats = tuple(dict.fromkeys(f.strip().lower() for f in str(text).split(",") if f.strip()))
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown or not formats:
        raise RobenchError(f"--figure-format takes a comma-separated list of {', '.join(FIGURE_FORMATS)}, got {text!r}")
    return ("png",) + tuple(f for f in formats if f != "png")
