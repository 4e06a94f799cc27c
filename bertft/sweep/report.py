"""A sweep's outputs, rebuilt from its storage at any time: ``trials.csv``, ``summary.csv/.md/.png``.

* ``trials.csv``: every attempt (point, seed, values, metric, every ``val/`` metric at the best validation, wall time,
  state, folder, first line of the error); interrupted attempts appear as ``interrupted`` next to their re-run.
* ``summary.csv`` / ``summary.md``: per point, over its finished seeds: n, mean, sd, the 95% Student's t interval,
  min, max; the best point by mean; and, best against each other point, a paired t-test over the seeds both finished.
* ``summary.png``: each point's mean with its interval, and every seed as a dot.
* with ``compare``: ``compare.csv/.md/.png`` (:mod:`bertft.sweep.compare`).
* after ``--confirm``: ``confirm.csv``, and the chosen points' figures on the new seeds in ``summary.md`` and
  ``compare.md`` (:mod:`bertft.sweep.confirm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bertft.io import atomic_write_text
from bertft.sweep import study as studies
from bertft.sweep.compare import write_comparison
from bertft.sweep.confirm import compare_notes, confirm_csv, confirm_markdown, confirmation_trials, figures
from bertft.sweep.points import ALPHA, edge_notes, point_label, state_name, summarize_points
from bertft.sweep.spec import label
from bertft.sweep.stats import Summary
from bertft.sweep.tables import csv_as_markdown, csv_text, number, plot_intervals


def write_report(
    study: optuna.Study, folder: Path, metric: str, direction: str, plot: bool = True, compare: str | None = None
) -> None:
    """Writes ``trials.csv``, ``summary.csv``, ``summary.md`` (and ``summary.png`` with ``plot``) into ``folder``.

    With ``compare`` (a searched key such as ``model.head``), also ``compare.csv``, ``compare.md`` and
    ``compare.png``: each of its values at its own best point, and every pair tested.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trials = studies.sweep_trials(study)
    keys = list(next((t.user_attrs["params"] for t in trials), {}))
    atomic_write_text(folder / "trials.csv", _trials_csv(trials, keys, metric))
    rows, best = summarize_points(trials, direction)
    atomic_write_text(folder / "summary.csv", _summary_csv(rows, keys, best))
    confirmed = figures(trials, confirmation_trials(study))
    if confirmed:
        atomic_write_text(folder / "confirm.csv", confirm_csv(confirmed))
    summary = _summary_md(
        study, trials, rows, keys, best, metric, direction, folder, confirm_markdown(confirmed, metric)
    )
    atomic_write_text(folder / "summary.md", summary)
    if plot and rows:
        _plot(rows, best, metric, folder / "summary.png", study.study_name)
    if compare:
        notes = compare_notes(trials, confirmed, compare, direction, metric)
        write_comparison(trials, compare, metric, direction, folder, plot=plot, notes=notes)


def _trials_csv(trials: Sequence[FrozenTrial], keys: list[str], metric: str) -> str:
    extra = sorted({m for t in trials for m in t.user_attrs.get("metrics", {})} - {metric})
    header = ["trial", "point", "seed", "state", *keys, metric, *extra, "wall_s", "folder", "error"]
    rows = []
    for t in trials:
        attrs = t.user_attrs
        value = t.value if t.state == TrialState.COMPLETE else attrs.get("pruned_value")
        metrics = attrs.get("metrics", {})
        rows.append(
            [t.number, attrs["point"], attrs["seed"], state_name(t)]
            + [label(attrs["params"].get(k)) for k in keys]
            + [number(value)]
            + [number(metrics.get(m)) for m in extra]
            + [attrs.get("wall_s", ""), attrs.get("folder", ""), attrs.get("error", "")]
        )
    return csv_text(header, rows)


def _summary_csv(rows: list[dict[str, Any]], keys: list[str], best: int | None) -> str:
    header = ["point", *keys, "n", "mean", "sd", "ci95_low", "ci95_high", "min", "max", "failed", "pruned"]
    header += ["best", "t_vs_best", "p_vs_best", "differs_from_best"]
    out = []
    for row in rows:
        s: Summary = row["summary"]
        differs = "" if math.isnan(row["p"]) else str(row["p"] < ALPHA).lower()
        out.append(
            [row["point"], *(label(row["params"].get(k)) for k in keys), s.n]
            + [number(x) for x in (s.mean, s.sd, s.ci_low, s.ci_high, s.min, s.max)]
            + [row["failed"], row["pruned"], str(row["point"] == best).lower(), number(row["t"]), number(row["p"])]
            + [differs]
        )
    return csv_text(header, out)


def _summary_md(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    rows: list[dict[str, Any]],
    keys: list[str],
    best: int | None,
    metric: str,
    direction: str,
    folder: Path,
    confirmation: list[str],
) -> str:
    names = ["finished", "pruned", "failed", "interrupted", "running", "waiting"]
    counts = {name: sum(state_name(t) == name for t in trials) for name in names}
    lines = [
        f"# Sweep `{study.study_name}`",
        "",
        f"Metric: `{metric}` ({direction}), the best value over each trial's validations. Trials: "
        + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        + ".",
        "",
        "| point | " + " | ".join(f"`{k}`" for k in keys) + " | n | mean | sd | 95% CI | min | max | vs best: p |",
        "|---:|" + "---|" * len(keys) + "---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        s: Summary = row["summary"]
        sd = "" if s.n < 2 else f"{s.sd:.4f}"
        versus = "**best**" if row["point"] == best else ("" if math.isnan(row["p"]) else f"{row['p']:.3g}")
        cells = [
            str(row["point"]),
            *(label(row["params"].get(k)) for k in keys),
            str(s.n),
            f"{s.mean:.4f}",
            sd,
            s.interval(),
        ]
        cells += [f"{s.min:.4f}", f"{s.max:.4f}", versus]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None:
        top = next(r for r in rows if r["point"] == best)
        s = top["summary"]
        spread = f" (mean ± sd over {s.n} seeds), 95% CI {s.interval()}" if s.n > 1 else ""
        lines += ["", f"**Best point: {best}** ({point_label(top['params'])}): `{metric}` {s.mean_sd()}{spread}."]
        lines += [f"At the edge of the search: {note}." for note in edge_notes(trials, top["params"])]
        if s.n > 1:
            lines += [
                "",
                f"Paired t-tests over shared seeds, best against each point (two-sided, α = {ALPHA}, not "
                "corrected for multiple comparisons):",
                "",
            ]
            for row in rows:
                if row["point"] == best:
                    continue
                if math.isnan(row["p"]):
                    lines.append(f"- point {row['point']}: not tested ({row['shared_seeds']} shared seeds; needs 2)")
                    continue
                verdict = "differs" if row["p"] < ALPHA else "no significant difference"
                gap = top["summary"].mean - row["summary"].mean
                lines.append(
                    f"- point {row['point']}: best − point = {gap:+.4f} over {row['shared_seeds']} seeds, "
                    f"t = {row['t']:.3g}, p = {row['p']:.3g}: {verdict}"
                )
    lines += confirmation
    failed = [t for t in trials if state_name(t) == "failed"]
    if failed:
        lines += ["", "Failed trials:", ""]
        lines += [
            f"- trial {t.number} (point {t.user_attrs['point']}, seed {t.user_attrs['seed']}): "
            f"{t.user_attrs.get('error', '')}"
            for t in failed
        ]
    tested = folder / "test_best.csv"
    if tested.is_file():
        lines += ["", "Test split, best point's checkpoints (`--test_best`):", "", *csv_as_markdown(tested)]
    if rows:
        lines += ["", "![summary](summary.png)"]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], best: int | None, metric: str, path: Path, title: str) -> None:
    columns = [
        (
            row["summary"],
            row["values"],
            f"{row['point']}\n{point_label(row['params']).replace(', ', chr(10))}",
            "tab:red" if row["point"] == best else "tab:blue",
        )
        for row in rows
    ]
    title = f"sweep {title}\nmean and 95% t interval per point; dots: seeds; red: best"
    plot_intervals(columns, metric, title, path, width=max(5.0, 0.9 * len(rows) + 2))
