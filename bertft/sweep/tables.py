"""How a sweep's outputs are written: CSV text, numbers, a CSV shown as Markdown, and the interval plot.

The plot is shared by ``summary.png`` (:mod:`~bertft.sweep.report`) and ``compare.png`` (:mod:`~bertft.sweep.compare`).
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bertft.sweep.stats import Summary


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """The rows as CSV text, the header first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def number(value: float | None) -> str:
    """A value for a CSV cell: 6 significant digits; empty for ``None`` and NaN."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def csv_as_markdown(path: Path) -> list[str]:
    """A CSV file as the lines of a Markdown table, numbers to 4 decimals."""
    with open(path, encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    if not table:
        return []

    def cell(text: str) -> str:
        try:
            return f"{float(text):.4f}" if "." in text else text
        except ValueError:
            return text  # a path

    return ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])] + [
        "| " + " | ".join(map(cell, r)) + " |" for r in table[1:]
    ]


def plot_intervals(
    columns: Sequence[tuple[Summary, Sequence[float], str, str]], metric: str, title: str, path: Path, width: float
) -> None:
    """Plots one column per (summary, seed values, tick label, colour): the mean, its 95% t interval, the seeds.

    Used by ``summary.png`` and ``compare.png``; prints a line and writes nothing without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{path.name} skipped: matplotlib is not installed (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(width, 4.0))
    for x, (s, values, _, color) in enumerate(columns):
        half = 0.0 if math.isnan(s.ci_low) else s.mean - s.ci_low
        ax.errorbar(x, s.mean, yerr=half, fmt="o", color=color, capsize=5, markersize=7, zorder=3)
        jitter = [x + 0.12 + 0.04 * (i % 3) for i in range(len(values))]
        ax.scatter(jitter, values, s=14, color="0.35", zorder=2)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([_wrap(column[2]) for column in columns], fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _wrap(text: str, width: int = 26) -> str:
    """A tick label in lines of about ``width`` characters, so that long values (a peft dict) do not overlap."""
    return "\n".join(
        wrapped for line in text.split("\n") for wrapped in textwrap.wrap(line, width, break_long_words=False) or [""]
    )
