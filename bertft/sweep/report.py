"""A sweep's outputs, rebuilt from its storage at any time: ``trials.csv``, ``summary.csv/.md/.png``.

* ``trials.csv``: every attempt (point, seed, values, metric, every ``val/`` metric at the best validation, wall time,
  state, folder, first line of the error); interrupted attempts appear as ``interrupted`` next to their re-run.
* ``summary.csv`` / ``summary.md``: per point, over its finished seeds: n, mean, sd, the 95% Student's t interval,
  min, max; the best point by mean; and, best against each other point, a paired t-test over the seeds both finished.
* ``summary.png``: each point's mean with its interval, and every seed as a dot.
* with ``compare``: ``compare.csv/.md/.png`` (:mod:`bertft.sweep.compare`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bertft.io import atomic_write_text
from bertft.sweep import study as studies
from bertft.sweep.spec import label, short_key
from bertft.sweep.stats import Summary, paired_t_test, summarize

#: Significance level of the paired tests.
ALPHA = 0.05
_STATES = {
    TrialState.COMPLETE: "finished",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def state_name(trial: FrozenTrial) -> str:
    """``finished``, ``pruned``, ``failed``, ``interrupted``, ``running`` or ``waiting``."""
    if trial.state == TrialState.FAIL:
        return "interrupted" if studies.is_interrupted(trial) else "failed"
    return _STATES[trial.state]


def point_label(params: dict[str, Any]) -> str:
    """``lr=5e-05, head=MeanHead``: a point's values, short."""
    return ", ".join(f"{short_key(k)}={label(v)}" for k, v in params.items())


def point_results(trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """Per point with at least one finished seed: ``point``, ``params``, and ``seeds`` / ``values`` in seed order."""
    points: dict[int, dict[str, Any]] = {}
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state != TrialState.COMPLETE or trial.value is None:
            continue
        entry = points.setdefault(attrs["point"], {"point": attrs["point"], "params": attrs["params"], "by_seed": {}})
        entry["by_seed"][attrs["seed"]] = trial.value
    results = []
    for point in sorted(points):
        entry = points[point]
        seeds = sorted(entry.pop("by_seed").items())
        results.append({**entry, "seeds": [s for s, _ in seeds], "values": [v for _, v in seeds]})
    return results


def summarize_points(trials: Sequence[FrozenTrial], direction: str) -> tuple[list[dict[str, Any]], int | None]:
    """Each point's :class:`~bertft.sweep.stats.Summary`, and the paired test of the best point against it.

    Returns:
        Rows (``point``, ``params``, ``summary``, ``failed``, ``pruned``, ``t``, ``p``, ``shared_seeds``) in point
        order, and the best point's number (``None`` before any trial finished).
    """
    results = point_results(trials)
    pick = max if direction == "maximize" else min
    best = pick(results, key=lambda r: summarize(r["values"]).mean) if results else None
    rows = []
    for result in results:
        row = {**result, "summary": summarize(result["values"]), "t": math.nan, "p": math.nan, "shared_seeds": 0}
        attempts = [t for t in trials if t.user_attrs.get("point") == result["point"]]
        row["failed"] = sum(state_name(t) == "failed" for t in attempts)
        row["pruned"] = sum(t.state == TrialState.PRUNED for t in attempts)
        if best is not None and result is not best:
            mine = dict(zip(result["seeds"], result["values"], strict=True))
            theirs = dict(zip(best["seeds"], best["values"], strict=True))
            shared = sorted(set(mine) & set(theirs))
            row["shared_seeds"] = len(shared)
            if len(shared) >= 2:
                row["t"], row["p"] = paired_t_test([theirs[s] for s in shared], [mine[s] for s in shared])
        rows.append(row)
    return rows, (best["point"] if best else None)


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
    atomic_write_text(folder / "summary.md", _summary_md(study, trials, rows, keys, best, metric, direction, folder))
    if plot and rows:
        _plot(rows, best, metric, folder / "summary.png", study.study_name)
    if compare:
        from bertft.sweep.compare import write_comparison  # imports this module

        write_comparison(trials, compare, metric, direction, folder, plot=plot)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


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
            + [_number(value)]
            + [_number(metrics.get(m)) for m in extra]
            + [attrs.get("wall_s", ""), attrs.get("folder", ""), attrs.get("error", "")]
        )
    return _csv(header, rows)


def _summary_csv(rows: list[dict[str, Any]], keys: list[str], best: int | None) -> str:
    header = ["point", *keys, "n", "mean", "sd", "ci95_low", "ci95_high", "min", "max", "failed", "pruned"]
    header += ["best", "t_vs_best", "p_vs_best", "differs_from_best"]
    out = []
    for row in rows:
        s: Summary = row["summary"]
        differs = "" if math.isnan(row["p"]) else str(row["p"] < ALPHA).lower()
        out.append(
            [row["point"], *(label(row["params"].get(k)) for k in keys), s.n]
            + [_number(x) for x in (s.mean, s.sd, s.ci_low, s.ci_high, s.min, s.max)]
            + [row["failed"], row["pruned"], str(row["point"] == best).lower(), _number(row["t"]), _number(row["p"])]
            + [differs]
        )
    return _csv(header, out)


def _summary_md(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    rows: list[dict[str, Any]],
    keys: list[str],
    best: int | None,
    metric: str,
    direction: str,
    folder: Path,
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
        ci = "" if math.isnan(s.ci_low) else f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"
        sd = "" if math.isnan(s.sd) else f"{s.sd:.4f}"
        versus = "**best**" if row["point"] == best else ("" if math.isnan(row["p"]) else f"{row['p']:.3g}")
        cells = [str(row["point"]), *(label(row["params"].get(k)) for k in keys), str(s.n), f"{s.mean:.4f}", sd, ci]
        cells += [f"{s.min:.4f}", f"{s.max:.4f}", versus]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None:
        top = next(r for r in rows if r["point"] == best)
        s = top["summary"]
        spread = (
            f" ± {s.sd:.4f} (mean ± sd over {s.n} seeds), 95% CI [{s.ci_low:.4f}, {s.ci_high:.4f}]" if s.n > 1 else ""
        )
        lines += ["", f"**Best point: {best}** ({point_label(top['params'])}): `{metric}` {s.mean:.4f}{spread}."]
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
        lines += ["", "Test split, best point's checkpoints (`--test_best`):", "", *_csv_as_md(tested)]
    if rows:
        lines += ["", "![summary](summary.png)"]
    return "\n".join(lines) + "\n"


def _csv_as_md(path: Path) -> list[str]:
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
    ax.set_xticklabels([column[2] for column in columns], fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
