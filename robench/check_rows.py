"""What every check on a results table shares: the row-finding type, ε as rows compare it, and an attack's
Relation (`robench.checks` and `robench.trust_checks` both read rows this way). Pure pandas."""

from __future__ import annotations

from typing import Any, Hashable

import pandas as pd

EPS_DECIMALS = 9  # ε read back from CSV is compared after rounding

Findings = dict[Hashable, Any]  # row index -> reason, (flag, reason), or a list of (flag, reason)


def _eps_key(rows: pd.DataFrame) -> pd.Series:
    return rows["epsilon"].astype(float).round(EPS_DECIMALS)


def _relation(relations: dict, attack: str):
    from .attacks.relations import relation_of

    return relation_of(relations, attack)
