"""Honesty checks: each fires on the row it should, and on nothing else."""

from __future__ import annotations

import pandas as pd
import pytest

from robench.checks import CHECKS, flag_rows, warnings_for
from robench.errors import RobenchError

LINF = [0.0, 0.1, 0.2, 0.3, 0.5]
L2 = [0.0, 1.0, 2.0, 4.0]


def healthy_rows(model: str = "m") -> list[dict]:
    """A plausible evaluation: accuracy falls with eps, PGD beats FGSM, noise is the weakest."""
    rows = []
    for eps, fgsm, pgd in zip(LINF, [0.95, 0.7, 0.4, 0.2, 0.05], [0.95, 0.5, 0.1, 0.0, 0.0]):
        rows.append(dict(attack="fgsm", norm="linf", epsilon=eps, accuracy=fgsm))
        rows.append(dict(attack="pgd", norm="linf", epsilon=eps, accuracy=0.0 if eps >= 0.5 else pgd))
    rows[-2]["accuracy"] = 0.0  # fgsm at the grey eps, too
    for eps, pgd_l2, cw, noise in zip(L2, [0.95, 0.6, 0.2, 0.0], [0.95, 0.55, 0.15, 0.0], [0.95, 0.95, 0.94, 0.9]):
        rows.append(dict(attack="pgd-l2", norm="l2", epsilon=eps, accuracy=pgd_l2))
        rows.append(dict(attack="cw", norm="l2", epsilon=eps, accuracy=cw))
        rows.append(dict(attack="noise", norm="l2", epsilon=eps, accuracy=noise))
    rows.append(dict(attack="jacobian_norm", norm="l2", epsilon=0.0, accuracy=42.0, grey_share=0.1,
                     distinct_predictions=10))  # not an accuracy
    return [dict(model=model, n=500, **row) for row in rows]


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def find(df: pd.DataFrame, attack: str, eps: float, model: str = "m") -> int:
    hit = df.index[(df["model"] == model) & (df["attack"] == attack) & (df["epsilon"] == eps)]
    assert len(hit) == 1
    return hit[0]


def set_acc(df: pd.DataFrame, attack: str, eps: float, value: float) -> int:
    idx = find(df, attack, eps)
    df.loc[idx, "accuracy"] = value
    return idx


def flagged(df: pd.DataFrame, **kw) -> dict[int, str]:
    flags = flag_rows(df, **kw)
    return {idx: f for idx, f in flags.items() if f}


def test_a_healthy_table_raises_nothing():
    df = table(healthy_rows("a") + healthy_rows("b"))
    assert flagged(df) == {}
    assert warnings_for(df) == []
    assert list(flag_rows(df).index) == list(df.index)


def test_rises_with_eps_flags_the_higher_row_only():
    df = table(healthy_rows())
    idx = set_acc(df, "pgd", 0.2, 0.6)  # above pgd's 0.5 at eps 0.1
    flags = flagged(df)
    assert "rises_with_eps" in flags[idx]
    assert all("rises_with_eps" not in f for i, f in flags.items() if i != idx)


def test_rises_with_eps_compares_against_every_smaller_eps():
    df = table(healthy_rows())
    idx = set_acc(df, "pgd-l2", 4.0, 0.3)  # below eps=1's 0.6, above eps=2's 0.2
    assert flagged(df) == {idx: "rises_with_eps"}


def test_rises_within_tolerance_is_noise():
    df = table(healthy_rows())
    set_acc(df, "cw", 4.0, 0.165)  # 0.015 above cw's 0.15 at eps 2
    assert flagged(df) == {}
    assert flagged(df, tolerance=0.01) == {find(df, "cw", 4.0): "rises_with_eps"}


def test_pgd_weaker_than_fgsm():
    df = table(healthy_rows())
    idx = set_acc(df, "pgd", 0.1, 0.71)  # fgsm has 0.7 here: within tolerance
    assert flagged(df) == {}
    df.loc[idx, "accuracy"] = 0.75
    assert flagged(df) == {idx: "pgd_weaker_than_fgsm"}


def without_noise_at_zero(rows: list[dict]) -> list[dict]:
    """Noise evaluated without its eps=0 row: clean accuracy then comes from the other attacks."""
    return [r for r in rows if not (r["attack"] == "noise" and r["epsilon"] == 0)]


def test_above_clean():
    df = table(without_noise_at_zero(healthy_rows()))
    idx = set_acc(df, "noise", 1.0, 0.98)  # clean (the eps=0 rows of fgsm, pgd, ...) is 0.95
    assert flagged(df) == {idx: "above_clean"}
    df.loc[idx, "accuracy"] = 0.97  # within tolerance
    assert flagged(df) == {}


def test_above_clean_with_its_own_clean_row_also_rises():
    df = table(healthy_rows())
    idx = set_acc(df, "noise", 1.0, 0.98)
    assert flagged(df) == {idx: "rises_with_eps;above_clean"}


def test_above_clean_uses_the_models_own_clean_accuracy():
    a, b = healthy_rows("a"), without_noise_at_zero(healthy_rows("b"))
    for row in b:  # model b is weaker everywhere; its rows are not compared with a's clean accuracy
        row["accuracy"] = round(row["accuracy"] * 0.5, 4)
    df = table(a + b)
    assert flagged(df) == {}
    idx = find(df, "noise", 1.0, model="b")
    df.loc[idx, "accuracy"] = 0.6  # below a's clean 0.95, above b's clean 0.475
    assert flagged(df) == {idx: "above_clean"}


def test_an_adversarial_attack_weaker_than_noise_is_flagged_on_its_own_row():
    """The issue's case: PGD-L2 0.55 at eps 2 where noise leaves 0.3 and CW 0.15 (the minimum is fine)."""
    df = table(healthy_rows())
    set_acc(df, "noise", 4.0, 0.0)  # adversaries reach 0.0 here: fine, and keeps noise falling
    set_acc(df, "noise", 2.0, 0.3)
    idx = set_acc(df, "pgd-l2", 2.0, 0.55)
    assert flagged(df) == {idx: "noise_stronger_than_adversarial"}
    df.loc[idx, "accuracy"] = 0.31  # within tolerance of noise's 0.3
    assert flagged(df) == {}


def test_noise_beyond_the_adversarial_grid_is_not_compared():
    rows = healthy_rows()
    rows.append(dict(model="m", n=500, attack="noise", norm="l2", epsilon=20.0, accuracy=0.0))
    assert flagged(table(rows)) == {}


def test_grey_image_bounds_iterative_attacks_only():
    df = table(healthy_rows())
    set_acc(df, "fgsm", 0.5, 0.15)  # FGSM is one step: it need not reach the grey image
    assert flagged(df) == {}
    idx = set_acc(df, "pgd", 0.5, 0.13)  # the grey image leaves 0.1 robust; tolerance 0.02
    assert flagged(df) == {idx: "above_grey_share;rises_with_eps"} or set(flagged(df)[idx].split(";")) == {
        "above_grey_share", "rises_with_eps"}
    df.loc[idx, "accuracy"] = 0.0
    assert flagged(df) == {}
    unknown = df.assign(grey_share=float("nan"))  # rows written before grey_share: nothing to compare with
    unknown.loc[idx, "accuracy"] = 0.0
    assert flagged(unknown) == {}


def test_grey_eps_ignores_noise_and_l2():
    rows = healthy_rows() + [
        dict(model="m", n=500, attack="noise", norm="linf", epsilon=0.5, accuracy=0.9),
        dict(model="m", n=500, attack="pgd-l2", norm="l2", epsilon=0.5, accuracy=0.9),
    ]
    df = table(rows)
    # the L2 row sits between pgd-l2's eps 0 (0.95) and eps 1 (0.6): healthy
    assert flagged(df) == {}


def test_relations_come_from_the_specs_not_from_names():
    from robench.attacks import Relation

    df = table(healthy_rows())
    idx = set_acc(df, "pgd", 0.1, 0.8)  # above fgsm's 0.7
    assert flagged(df) == {idx: "pgd_weaker_than_fgsm"}
    assert flagged(df, relations={}) == {}  # no spec says pgd must beat fgsm
    swapped = {"fgsm": Relation(stronger_than=("pgd",)), "noise": Relation(role="baseline")}
    set_acc(df, "pgd", 0.1, 0.5)
    fgsm = set_acc(df, "fgsm", 0.1, 0.75)
    found = flagged(df, relations=swapped)
    assert fgsm in found and set(found.values()) == {"fgsm_weaker_than_pgd"}
    assert set(df.loc[list(found), "attack"]) == {"fgsm"}


def test_one_row_can_carry_several_flags_and_warnings_name_them():
    df = table(healthy_rows())
    idx = set_acc(df, "pgd", 0.5, 0.99)  # rises, beats fgsm, above clean, above the grey share
    assert set(flag_rows(df)[idx].split(";")) == {
        "rises_with_eps", "pgd_weaker_than_fgsm", "above_clean", "above_grey_share",
    }  # fmt: skip
    lines = warnings_for(df)
    assert len(lines) == 4
    assert all(line.startswith("m: pgd at eps=0.5: ") for line in lines)
    assert all("\n" not in line for line in lines)


def test_jacobian_norm_rows_are_ignored():
    df = table(healthy_rows())
    jac = df.index[df["attack"] == "jacobian_norm"][0]
    df.loc[jac, "epsilon"] = 0.5
    df.loc[jac, "norm"] = "linf"
    assert flagged(df) == {}


def test_epsilons_read_back_from_csv_still_match(tmp_path):
    df = table(healthy_rows())
    set_acc(df, "pgd", 0.3, 0.3)  # fgsm has 0.2 at eps 0.3
    df.loc[find(df, "pgd", 0.3), "epsilon"] = 0.1 + 0.2  # 0.30000000000000004, as arithmetic makes it
    path = tmp_path / "r.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert flag_rows(back).tolist() == flag_rows(df).tolist()
    assert "pgd_weaker_than_fgsm" in flag_rows(back)[find(back, "pgd", 0.1 + 0.2)]


def test_checks_are_table_driven_and_missing_columns_refused():
    assert [c.name for c in CHECKS] == [
        "rises_with_eps", "weaker_than_declared", "above_clean",
        "noise_stronger_than_adversarial", "above_grey_share", "one_class_for_every_input", "weaker_than_worst_case",
        "model_checks", "blackbox_stronger", "ce_loss_masked", "blackbox_alone", "attack_failure",
        "certified_but_broken",
    ]  # fmt: skip
    with pytest.raises(RobenchError, match="norm"):
        flag_rows(pd.DataFrame({"model": ["m"], "attack": ["pgd"], "epsilon": [0.1], "accuracy": [0.5]}))
    assert flag_rows(table(healthy_rows()).iloc[:0]).empty


def test_rows_of_different_evaluations_are_not_compared():
    """Noise on 1,000 images and CW on 100 have different clean accuracies: no flag from that alone."""
    df = pd.DataFrame({
        "model": ["m"] * 4, "attack": ["noise", "noise", "cw", "cw"], "norm": ["l2"] * 4,
        "epsilon": [0.0, 2.0, 0.0, 2.0], "accuracy": [0.96, 0.95, 0.99, 0.90], "n": [1000, 1000, 100, 100],
        "seed": [0] * 4,
    })  # fmt: skip
    assert flag_rows(df).tolist() == ["", "", "", ""]
    same_n = df.assign(n=100, accuracy=[0.96, 0.60, 0.96, 0.90])
    assert flag_rows(same_n).tolist() == ["", "", "", "noise_stronger_than_adversarial"]  # CW is the weak one
