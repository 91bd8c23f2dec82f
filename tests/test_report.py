"""`robench report` on real results: summary numbers recomputed from the CSV rows, the seed band,
2400 x 1500 PNGs (8 x 5 in at 300 dpi), SVG/PDF on request, a defense's fixed style, paper-style
legends and titles, 95% bands, a self-contained HTML page, provenance, and one-line errors."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench.cli import cli
from robench.evaluate import EvalConfig, evaluate
from robench.report import attack_curves, auc, eps_below, load_results, provenance, select_rows
from robench.sources import from_run
from robench.train import TrainConfig, train

ATTACKS = ("fgsm", "noise", "pgd")
CURVES = ("worst_case_linf", *ATTACKS)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run):
    """trained_run (its own recipe), two undefended models differing in the seed alone (a band of 2),
    and a JR model."""
    root = tmp_path_factory.mktemp("report-runs")
    base = dict(model="mlp", epochs=1, lr=0.05, train_subset=1000, test_subset=100, norm_samples=50, device="cpu")
    train(TrainConfig(**base, seed=0), root / "plain-seed0", show_progress=False)
    train(TrainConfig(**base, seed=1), root / "plain-seed1", show_progress=False)
    train(TrainConfig(**base, seed=0, jr=0.1), root / "jr", show_progress=False)
    return [trained_run, root / "plain-seed0", root / "plain-seed1", root / "jr"]


@pytest.fixture(scope="module")
def csvs(runs, tmp_path_factory):
    """Two real results CSVs (each also holds every model's jacobian_norm row: duplicates to merge)."""
    root = tmp_path_factory.mktemp("report-csv")
    sources = [from_run(r) for r in runs]
    evaluate(sources, EvalConfig(attacks="fgsm,pgd", eps=(0.0, 0.1, 0.2), n=100, device="cpu"),
             out=root / "adv.csv", show_progress=False)  # fmt: skip
    evaluate(sources, EvalConfig(attacks="noise", eps=(0.0, 4.0, 8.0), n=100, device="cpu"),
             out=root / "noise.csv", show_progress=False)  # fmt: skip
    return [root / "adv.csv", root / "noise.csv"]


@pytest.fixture(scope="module")
def report(csvs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    result = invoke("report", *csvs, "--out", out, "--format", "html")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_report_writes_every_file_and_prints_the_summary(report):
    out, stdout = report
    names = {p.name for p in out.iterdir()}
    assert names == {"summary.csv", "report.md", "report.html", *(f"{a}.png" for a in CURVES)}
    assert "clean accuracy" in stdout and "jr=0.1" in stdout and "plain-seed1" in stdout


def test_summary_equals_values_computed_from_the_rows(report, csvs, runs):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv")
    rows = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    assert len(summary) == 4 and set(summary["model"]) == {str(r) for r in runs}
    assert sorted(summary["defense"]) == ["jr=0.1", "none", "none", "none"]
    assert [c for c in summary.columns if c.startswith("auc_")][0] == "auc_worst_case_linf"  # the headline first
    assert (summary["n"] == 100).all() and summary["cw_median_distance"].isna().all()
    for record in summary.to_dict("records"):
        mine = rows[rows["model"] == record["model"]]
        jac = mine[mine["attack"] == "jacobian_norm"]
        assert len(jac) == 2  # one per CSV, merged into one summary row
        assert record["clean_accuracy"] == pytest.approx(jac["accuracy"].iloc[0], abs=1e-12)
        assert record["jacobian_norm"] == pytest.approx(jac["value"].iloc[0], rel=1e-12)
        for attack in CURVES:
            curve = mine[mine["attack"] == attack.removesuffix("_linf")].sort_values("epsilon")
            eps, acc = curve["epsilon"].to_numpy(), curve["accuracy"].to_numpy()
            assert record[f"auc_{attack}"] == pytest.approx(np.trapezoid(acc, eps) / (eps[-1] - eps[0]), abs=1e-12)
            eps50 = record[f"eps50_{attack}"]
            if (acc >= 0.5).all():
                assert math.isnan(eps50)
            elif acc[0] < 0.5:
                assert eps50 == eps[0]
            else:  # accuracy is 0.5 there on the piecewise-linear curve, and >= 0.5 at every grid point before
                assert np.interp(eps50, eps, acc) == pytest.approx(0.5, abs=1e-9)
                assert (acc[eps < eps50] >= 0.5).all()


def test_seeds_of_one_defense_become_a_mean_curve_with_a_std_band(csvs, runs):
    rows = select_rows(load_results(csvs))
    metas = {m: provenance(m) for m in rows["model"].unique()}
    curves = {c.label: c for c in attack_curves(rows, "pgd", metas)}
    # trained_run has another recipe (3 epochs, 3000 images): a curve of its own, never averaged in
    assert set(curves) == {"none (2 seeds)", "none (mlp-plain)", "jr=0.1"}
    band, single = curves["none (2 seeds)"], curves["jr=0.1"]
    assert band.k == 2 and single.k == 1 and single.std is None and curves["none (mlp-plain)"].k == 1
    raw = pd.concat([pd.read_csv(p) for p in csvs])
    seeds = [str(r) for r in runs[1:3]]
    plain = raw[(raw["attack"] == "pgd") & raw["model"].isin(seeds)].pivot(index="model", columns="epsilon", values="accuracy")
    np.testing.assert_allclose(band.eps, plain.columns.to_numpy())
    np.testing.assert_allclose(band.mean, plain.mean(axis=0).to_numpy())
    np.testing.assert_allclose(band.std, plain.std(axis=0, ddof=1).to_numpy())


def test_pngs_are_8_by_5_inches_at_300_dpi(report):
    import matplotlib.image

    out, _ = report
    for attack in CURVES:
        height, width = matplotlib.image.imread(out / f"{attack}.png").shape[:2]
        assert (width, height) == (2400, 1500), attack


def test_svg_and_pdf_are_written_when_asked(csvs, tmp_path):
    out = tmp_path / "figs"
    result = invoke("report", *csvs, "--out", out, "--figure-format", "svg,pdf")
    assert result.exit_code == 0, result.output
    for attack in CURVES:
        assert (out / f"{attack}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / f"{attack}.svg").read_bytes()[:1000]
        assert (out / f"{attack}.pdf").read_bytes()[:5] == b"%PDF-"
    bad = invoke("report", *csvs, "--out", tmp_path / "bad", "--figure-format", "png,gif")
    assert bad.exit_code == 1 and "--figure-format takes" in bad.output


def _line_styles(curves):
    """Legend text -> (colour, line style, marker) of the line a figure draws for it."""
    from robench.plots import accuracy_figure

    fig = accuracy_figure(curves, title="t", xlabel="x")
    ax = fig.axes[0]
    return {line.get_label(): (line.get_color(), line.get_linestyle(), line.get_marker())
            for line in ax.lines if not line.get_label().startswith("_")}  # fmt: skip


def test_a_defense_has_the_same_style_in_reports_of_different_model_sets(csvs, runs):
    """The JR model's line looks the same whether it is drawn with every model or with JR alone, and
    the undefended curve is never drawn in JR's colour: styles come from the defense, not the position."""
    rows = select_rows(load_results(csvs))
    metas = {m: provenance(m) for m in rows["model"].unique()}
    every = _line_styles(attack_curves(rows, "pgd", metas))
    jr_only = rows[rows["defense"] == "jr=0.1"]
    alone = _line_styles(attack_curves(jr_only, "pgd", metas))
    assert set(alone) == {"JR λ=0.1"} and alone["JR λ=0.1"] == every["JR λ=0.1"]
    assert every["no defense (2 seeds)"][0] != every["JR λ=0.1"][0]


def test_paper_style_legends_and_titles():
    from robench.figure_style import figure_title, paper_label

    assert paper_label("none") == "no defense"
    assert paper_label("jr=0.01") == "JR λ=0.01"
    assert paper_label("l2=0.0005+dropout=0.5") == "L2 5e-4 + dropout 0.5"
    assert paper_label("adv=fgsm@0.3") == "FGSM-AT ε=0.3"
    assert paper_label("adv=fgsm@0.1+jr=0.01+l2=0.0005+dropout=0.5") == "L2 5e-4 + dropout 0.5 + JR λ=0.01 + FGSM-AT ε=0.1"
    assert paper_label("jr=0.01(pixel)") == "JR λ=0.01 (pixel units)"
    assert paper_label("external") == "external"
    pgd = '{"class":"LinfPGD","params":{"random_start":true,"rel_stepsize":0.0625,"steps":40},"repeats":1}'
    assert figure_title("pgd", "linf", "mnist", 1000, 5, pgd) == "PGD-40 L∞ · MNIST · n=1000 · 5 seeds"
    assert figure_title("worst_case_l2", "l2", "cifar10", 500, 1) == "Worst case over attacks L2 · CIFAR-10 · n=500 · 1 seed"


def test_a_one_seed_curve_carries_its_binomial_band_and_several_seeds_a_t_band(csvs, runs):
    from scipy import stats

    rows = select_rows(load_results(csvs))
    metas = {m: provenance(m) for m in rows["model"].unique()}
    curves = {c.label: c for c in attack_curves(rows, "pgd", metas)}
    single = curves["jr=0.1"]
    mine = rows[(rows["attack"] == "pgd") & (rows["defense"] == "jr=0.1")].set_index("epsilon").loc[single.eps]
    np.testing.assert_allclose(single.low, mine["ci_low"].to_numpy())  # Clopper-Pearson over n=100
    np.testing.assert_allclose(single.high, mine["ci_high"].to_numpy())
    assert (single.low <= single.mean).all() and (single.mean <= single.high).all() and (single.high > single.low).any()
    band = curves["none (2 seeds)"]
    half = stats.t.ppf(0.975, 1) * band.std / np.sqrt(2)
    np.testing.assert_allclose(band.low, np.clip(band.mean - half, 0, 1))
    np.testing.assert_allclose(band.high, np.clip(band.mean + half, 0, 1))


def test_markdown_embeds_plots_and_gives_provenance(report, runs):
    text = (report[0] / "report.md").read_text()
    for attack in CURVES:
        assert f"![{attack}]({attack}.png)" in text and f"## {attack} (" in text
    assert "| mean of 2 | none (2 seeds) |" in text
    assert "training seed 1; defense none" in text and "defense jr=0.1" in text
    assert f"torch {torch.__version__}" in text and '"class":"LinfPGD"' in text
    assert "provenance unavailable" not in text
    # the headline: JR against each undefended model, worst case, with interval, p-value and n
    assert re.search(r"jr=0\.1 vs none, worst case L∞ ε=0\.1: [+-]\d+\.\d points \[-?\d+\.\d, -?\d+\.\d\], "
                     r"p [<=] [\d.e-]+, n=100", text)  # fmt: skip
    assert text.index("Did the defense help?") < text.index("## Summary")


def test_html_is_self_contained(report):
    out, _ = report
    page = (out / "report.html").read_text()
    for forbidden in ("http://", "https://", 'src="http', "<script", "<link"):
        assert forbidden not in page
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == len(CURVES)
    assert {base64.b64decode(u) for u in uris} == {(out / f"{a}.png").read_bytes() for a in CURVES}
    assert "<table>" in page and "none (2 seeds)" in page


def test_models_without_a_run_directory_and_repeated_csvs(tmp_path, csvs):
    moved = pd.read_csv(csvs[0])
    moved["model"] = moved["model"].map(lambda m: f"gone/{m.rsplit('/', 1)[-1]}")
    moved.to_csv(tmp_path / "moved.csv", index=False)
    result = invoke("report", tmp_path / "moved.csv", tmp_path / "moved.csv", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.md").read_text().count("provenance unavailable") == 4
    assert not (tmp_path / "r" / "report.html").exists()
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert len(summary) == 4 and "auc_noise" not in summary.columns
    # without a training config nothing says two models are seeds of one recipe: never banded
    rows = select_rows(load_results([tmp_path / "moved.csv"]))
    assert all(c.k == 1 for c in attack_curves(rows, "pgd", {}))


def test_after_a_preset_change_only_the_new_rows_are_drawn(tmp_path, csvs):
    """Rows of an older PGD preset (another spec_hash), earlier in the file, are kept but not drawn."""
    new = pd.read_csv(csvs[0])
    old = new[new["attack"] == "pgd"].assign(spec_hash="0ld0ld0ld0ld", accuracy=1.0)
    pd.concat([old, new], ignore_index=True).to_csv(tmp_path / "both.csv", index=False)
    rows = select_rows(load_results([tmp_path / "both.csv"]))
    pgd = rows[rows["attack"] == "pgd"]
    assert set(pgd["spec_hash"]) == set(new.loc[new["attack"] == "pgd", "spec_hash"])
    result = invoke("report", tmp_path / "both.csv", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    reference = pd.read_csv(csvs[0])
    for record in summary.to_dict("records"):
        curve = reference[(reference["model"] == record["model"]) & (reference["attack"] == "pgd")]
        assert record["auc_pgd"] == pytest.approx(auc(curve["epsilon"], curve["accuracy"]), abs=1e-12)


def test_auc_and_eps50_on_hand_made_curves():
    assert auc([0, 1, 2], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert auc([2, 0, 1], [0.0, 1.0, 1.0]) == pytest.approx(0.75)  # order of the rows does not matter
    assert math.isnan(auc([0.3], [0.9]))
    assert eps_below([0, 1, 2], [1.0, 0.6, 0.2]) == pytest.approx(1.25)
    assert eps_below([0, 1, 2], [1.0, 0.5, 0.0]) == pytest.approx(1.0)
    assert eps_below([0, 1, 2], [0.4, 0.9, 0.1]) == 0  # already below at the first point
    assert math.isnan(eps_below([0, 1], [1.0, 0.8]))


def test_bad_input_gets_one_line(tmp_path, csvs):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "blocker").write_text("")
    cases = [
        ([tmp_path / "missing.csv", "--out", tmp_path / "r"], "not found"),
        ([tmp_path / "other.csv", "--out", tmp_path / "r"], "not a robench results CSV"),
        ([csvs[0], "--out", tmp_path / "blocker" / "r"], "cannot write the report"),
    ]
    for args, message in cases:
        result = invoke("report", *args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, result.output)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("width", [40, 60, 80])
def test_terminal_tables_never_cut_a_number(csvs, width):
    """Narrow terminals and pipes (rich assumes 80 columns there): cells wrap, numbers stay whole."""
    import io

    from rich.console import Console

    from robench.report import summarize, summary_tables
    from robench.tables import attack_tables, clean_table, print_table

    df = load_results(csvs)
    tables = [clean_table(df), *attack_tables(df), *summary_tables(summarize(df))]
    for table in tables:
        buffer = io.StringIO()
        print_table(Console(file=buffer, width=width), table)
        text = buffer.getvalue()
        assert "…" not in text
        words = set(re.findall(r"[^\s│┃]+", text))
        for column in table.columns[2:]:
            for cell in column.cells:
                for word in str(cell).split():
                    assert word in words, (width, table.title, word)


def test_cifar_grids_read_in_255ths():
    from robench.tables import eps_text

    assert eps_text(8 / 255, True) == "8/255" and eps_text(0.0, True) == "0" and eps_text(0.1, False) == "0.1"
