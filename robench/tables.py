"""Rich tables of results: one per attack (models as rows, epsilons as columns), one of clean metrics."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from .results import JACOBIAN_ATTACK, JACOBIAN_ATTACKS, JACOBIAN_NORMALIZED, WORST_CASE
from .results.select import curve_order, current_rows, headline, with_curve_names
from .untrusted import for_console


def never_cut(table: Table, *, keep_whole_from: int = 0) -> Table:
    """Make `table` wrap rather than cut: at any width, and when piped (rich then assumes 80
    columns), every cell folds onto more lines instead of ending in '…'; columns from
    `keep_whole_from` on are never narrower than their longest word, so no number is split."""
    for index, column in enumerate(table.columns):
        column.overflow = "fold"
        column.no_wrap = False
        if index >= keep_whole_from:
            column.min_width = max([len(w) for cell in column.cells for w in str(cell).split()] + [1])
    return table


def print_table(console, table: Table) -> None:
    """Print `table` whole: as it is where it fits the console, else stacked (one block per row, a
    line per column), so a narrow terminal or a pipe never gets a number cut or split."""
    # Each column needs its longest unbreakable word (never_cut's min_width; 6 for text that may fold)
    # plus one space of padding either side and a border.
    needed = sum(max(column.min_width or 0, 6) + 3 for column in table.columns) + 1
    console.print(table if needed <= console.width else stacked(table))


def stacked(table: Table) -> Table:
    """`table` with its rows as blocks of (column, value) lines: the narrow form of a wide table."""
    columns = [(str(c.header), list(c.cells)) for c in table.columns]
    narrow = Table(title=table.title, caption=table.caption, show_header=False)
    narrow.add_column("column", overflow="fold")
    narrow.add_column("value", justify="right", overflow="fold",
                      min_width=max([len(w) for _, cells in columns[1:] for cell in cells for w in str(cell).split()] + [1]))  # fmt: skip
    rows = len(columns[0][1]) if columns else 0
    for r in range(rows):
        narrow.add_row(f"[bold]{columns[0][1][r]}[/]", "", end_section=False)
        for header, cells in columns[1:]:
            narrow.add_row(header, cells[r], end_section=(header == columns[-1][0]))
    return narrow


def eps_text(eps: float, in_255ths: bool) -> str:
    """An epsilon as a column header: k/255 on a grid of 255ths (CIFAR-10, ImageNet), else as a number."""
    return (f"{round(eps * 255)}/255" if eps else "0") if in_255ths else f"{eps:g}"


def _in_255ths(dataset_names, epsilons) -> bool:
    return set(dataset_names) <= {"cifar10", "imagenet"} and all(abs(e * 255 - round(e * 255)) < 1e-4 for e in epsilons)


def _label(model: str) -> str:
    """A run's short name for a table cell (its directory name), printed literally."""
    return for_console(model.rstrip("/").split("/")[-1] or model)


def clean_table(df: pd.DataFrame) -> Table:
    """Clean accuracy and mean exact test ||J||_F per model."""
    table = Table(title="clean accuracy and mean test Jacobian norm")
    for column in ("model", "defense", "n", "clean accuracy", "||J||_F normalized", "||J||_F pixel"):
        table.add_column(column, justify="left" if column in ("model", "defense") else "right")
    rows = current_rows(df)
    normalized = rows[rows["attack"] == JACOBIAN_NORMALIZED]
    normalized = dict(zip(zip(normalized["model_hash"], normalized["n"]), normalized["value"]))
    rows = rows[rows["attack"] == JACOBIAN_ATTACK].sort_values("n", kind="stable")
    for row in rows.drop_duplicates("model_hash", keep="last").to_dict("records"):  # largest n per model
        norm = normalized.get((row["model_hash"], row["n"]), math.nan)
        table.add_row(_label(row["model"]), for_console(row["defense"]), str(int(row["n"])), f"{row['accuracy']:.4f}",
                      "—" if math.isnan(norm) else f"{norm:.3f}", f"{row['value']:.3f}")  # fmt: skip
    return never_cut(table, keep_whole_from=2)


def attack_tables(df: pd.DataFrame) -> list[Table]:
    """Accuracy vs epsilon, one table per attack, worst cases first (with their 95% intervals);
    CW tables add the median minimal distance. Only current rows (latest spec) are shown."""
    tables = []
    for column in ("ci_low", "ci_high"):
        if column not in df.columns:
            df = df.assign(**{column: math.nan})
    rows_now = headline(with_curve_names(current_rows(df))) if len(df) else df
    attacks = rows_now[~rows_now["attack"].isin(JACOBIAN_ATTACKS)]
    groups = dict(tuple(attacks.groupby("attack", sort=False)))
    for attack in curve_order(groups):
        group = groups[attack]
        worst = attack.startswith(WORST_CASE)
        epsilons = sorted(group["epsilon"].unique())
        sizes = "/".join(str(int(n)) for n in sorted(group["n"].unique()))
        what = "robust accuracy (worst case over attacks) [95% CI]" if worst else "accuracy"
        table = Table(title=for_console(f"{attack} ({group['norm'].iloc[0]}, n={sizes}): {what} vs epsilon"))
        table.add_column("model")
        table.add_column("defense")
        in_255ths = _in_255ths(group["dataset"].unique(), epsilons)
        for eps in epsilons:
            table.add_column(eps_text(eps, in_255ths), justify="right")
        has_median = group["value"].notna().any()
        if has_median:
            table.add_column("median dist", justify="right")
        for model, rows in group.groupby("model", sort=False):
            by_eps = {e: (a, lo, hi) for e, a, lo, hi in zip(rows["epsilon"], rows["accuracy"], rows["ci_low"],
                                                              rows["ci_high"])}  # fmt: skip
            cells = [_cell(*by_eps[e], worst) if e in by_eps else "" for e in epsilons]
            if has_median:
                median = rows["value"].dropna()
                cells.append(_fmt(median.iloc[-1]) if len(median) else "")
            flags = "; ".join(sorted({f for fl in rows["flags"] for f in str(fl).split(";") if f}))
            table.add_row(_label(model), for_console(rows["defense"].iloc[0])
                          + (f" [yellow]⚠ {for_console(flags)}" if flags else ""), *cells)  # fmt: skip
        tables.append(never_cut(table, keep_whole_from=2))
    return tables


def _cell(accuracy: float, low: float, high: float, with_ci: bool) -> str:
    if with_ci and not (math.isnan(low) or math.isnan(high)):
        return f"{accuracy:.3f} [{low:.2f}, {high:.2f}]"
    return f"{accuracy:.3f}"


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3f}"
