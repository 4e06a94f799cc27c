"""Comparing the values of one searched key, each at its own best setting of the others: ``compare.csv/.md/.png``.

"Does my head beat MeanHead?" is not answered by the sweep's best point alone: heads may prefer different learning
rates, so each head is judged at the best point among those with that head (by mean over seeds), and every two heads
are compared by a paired t-test over the seeds both ran, Holm-adjusted for the number of pairs. Turn it on with
``compare: model.head`` in the sweep file, or ``bertft sweep --report FOLDER --compare model.head`` afterwards.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from bertft.io import atomic_write_text
from bertft.sweep.imported import sources
from bertft.sweep.points import ALPHA, edge_notes, point_label, point_results
from bertft.sweep.spec import SweepError, encode, label, short_key
from bertft.sweep.stats import Summary, holm, paired_t_test, summarize
from bertft.sweep.tables import csv_text, number, plot_intervals


@dataclass(frozen=True)
class Entry:
    """One value of the compared key at its best point.

    Attributes:
        value: The compared key's value (as the sweep file gives it).
        point: The chosen point's number.
        others: The chosen point's other searched values (``{"model.lr": 1e-4}``).
        seeds: Its finished seeds, in order.
        values: The metric per seed.
        summary: Their :class:`~bertft.sweep.stats.Summary`.
        tried: How many points had this value (the choice was among them).
    """

    value: Any
    point: int
    others: dict[str, Any]
    seeds: list[int]
    values: list[float]
    summary: Summary
    tried: int
    edges: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """Two entries compared over their shared seeds: ``first`` − ``second``, first ranked higher."""

    first: Entry
    second: Entry
    n: int
    difference: Summary | None  # of the per-seed differences; None with fewer than 2 shared seeds
    t: float
    p: float
    p_holm: float


def compare(trials: Sequence[FrozenTrial], key: str, direction: str) -> tuple[list[Entry], list[Pair]]:
    """Each value of ``key`` at its best point, best first, and every pair of them tested.

    Raises:
        SweepError: ``key`` is not one of the sweep's searched keys.
    """
    results = point_results(trials)
    keys = list(results[0]["params"]) if results else []
    if results and key not in keys:
        raise SweepError(f"compare: {key!r} is not a searched key of this sweep (searched: {', '.join(keys)})")
    sign = 1 if direction == "maximize" else -1
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(_group(result["params"], key), []).append(result)
    entries = []
    for name, group in groups.items():
        best = max(group, key=lambda r: sign * summarize(r["values"]).mean)  # first point wins a tie
        others = {k: v for k, v in best["params"].items() if k != key}
        entries.append(
            Entry(
                best["params"][key],
                best["point"],
                others,
                best["seeds"],
                best["values"],
                summarize(best["values"]),
                len(group),
                tuple(edge_notes([t for t in trials if _group(t.user_attrs.get("params", {}), key) == name], others)),
            )
        )
    entries.sort(key=lambda e: -sign * e.summary.mean)
    raw = []
    for first, second in itertools.combinations(entries, 2):
        mine, theirs = (
            dict(zip(first.seeds, first.values, strict=True)),
            dict(zip(second.seeds, second.values, strict=True)),
        )
        shared = sorted(set(mine) & set(theirs))
        if len(shared) < 2:
            raw.append((first, second, len(shared), None, math.nan, math.nan))
            continue
        a, b = [mine[s] for s in shared], [theirs[s] for s in shared]
        t, p = paired_t_test(a, b)
        raw.append((first, second, len(shared), summarize([x - y for x, y in zip(a, b, strict=True)]), t, p))
    adjusted = holm([r[5] for r in raw])
    return entries, [Pair(*r, p_holm=q) for r, q in zip(raw, adjusted, strict=True)]


def _group(params: dict[str, Any], key: str) -> str:
    """The compared value of a point's ``params``, as one group's name (mappings as canonical JSON)."""
    return repr(encode(params.get(key)))


def write_comparison(
    trials: Sequence[FrozenTrial],
    key: str,
    metric: str,
    direction: str,
    folder: Path,
    plot: bool = True,
    notes: Sequence[str] = (),
) -> None:
    """Writes ``compare.csv``, ``compare.md`` and (with ``plot``) ``compare.png`` for ``key`` into ``folder``.

    ``notes`` are Markdown lines appended to ``compare.md`` (the chosen points' ``--confirm`` figures,
    :func:`bertft.sweep.confirm.compare_notes`).
    """
    entries, pairs = compare(trials, key, direction)
    if not entries:
        return
    other_keys = list(dict.fromkeys(k for e in entries for k in e.others))  # trials read --with may lack a key
    header = [
        "rank",
        short_key(key),
        "point",
        *map(short_key, other_keys),
        "points_tried",
        "n",
        "mean",
        "sd",
        "ci95_low",
        "ci95_high",
    ]
    rows = [
        [rank, label(e.value), e.point, *(_cell(e, k) for k in other_keys), e.tried, e.summary.n]
        + [number(x) for x in (e.summary.mean, e.summary.sd, e.summary.ci_low, e.summary.ci_high)]
        for rank, e in enumerate(entries, 1)
    ]
    atomic_write_text(folder / "compare.csv", csv_text(header, rows))
    markdown = _markdown(entries, pairs, key, metric, direction, other_keys, sources(trials))
    atomic_write_text(folder / "compare.md", markdown + "".join(f"{line}\n" for line in notes))
    if plot:
        _plot(entries, key, metric, folder / "compare.png")


def _cell(entry: Entry, key: str) -> str:
    return label(entry.others[key]) if key in entry.others else ""


def _markdown(
    entries: list[Entry],
    pairs: list[Pair],
    key: str,
    metric: str,
    direction: str,
    other_keys: list[str],
    read: dict[str, tuple[int, int]],
) -> str:
    name = short_key(key)
    most, fewest = max(e.tried for e in entries), min(e.tried for e in entries)
    tried = (
        f" among the {most} points it was tried at"
        if most == fewest
        else (f" among the points it was tried at ({fewest} to {most}: `points_tried` in compare.csv)")
    )
    lines = [
        f"# Comparing `{key}`, each value at its best point",
        "",
        f"Metric: `{metric}` ({direction}). Each value is shown at the point with its best mean over seeds"
        + (tried if most > 1 else "")
        + ". The choice and the figures come from the same seeds, so every value's figure is optimistic in the same "
        "way; an independent confirmation uses new seeds at the chosen points.",
        "",
    ]
    for path, (low, high) in read.items():
        lines += [f"Points {low} to {high} are an earlier sweep's finished trials, read from `{path}` (`--with`).", ""]
    lines += [
        f"| rank | {name} | point | " + "".join(f"`{k}` | " for k in other_keys) + "n | mean ± sd | 95% CI |",
        "|---:|---|---:|" + "---|" * len(other_keys) + "---:|---|---|",
    ]
    for rank, e in enumerate(entries, 1):
        s = e.summary
        cells = [str(rank), f"**{label(e.value)}**" if rank == 1 else label(e.value), str(e.point)]
        cells += [_cell(e, k) for k in other_keys] + [str(s.n), s.mean_sd(), s.interval()]
        lines.append("| " + " | ".join(cells) + " |")
    edges = [f"- {label(e.value)}: {note}." for e in entries for note in e.edges]
    if edges:
        lines += ["", "At the edge of the search (the value's best point at the end of a searched range):", "", *edges]
    lines += [
        "",
        f"Every pair, paired t-test over the seeds both ran (two-sided); Holm-adjusted p over the {len(pairs)} pairs, "
        f"α = {ALPHA}:",
        "",
        "| pair | seeds | difference, mean [95% CI] | t | p | p (Holm) | verdict |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for pair in pairs:
        names = f"{label(pair.first.value)} − {label(pair.second.value)}"
        if pair.difference is None:
            lines.append(f"| {names} | {pair.n} | not tested (needs 2 shared seeds) | | | | |")
            continue
        d = pair.difference
        verdict = "**differs**" if pair.p_holm < ALPHA else "no significant difference"
        if math.isnan(pair.p):
            verdict = "identical on every seed"
        lines.append(
            f"| {names} | {pair.n} | {d.mean:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}] | {pair.t:.3g} | "
            f"{pair.p:.3g} | {pair.p_holm:.3g} | {verdict} |"
        )
    lines += ["", "![compare](compare.png)"]
    return "\n".join(lines) + "\n"


def _plot(entries: list[Entry], key: str, metric: str, path: Path) -> None:
    columns = [
        (e.summary, e.values, f"{label(e.value)}\n{point_label(e.others).replace(', ', chr(10))}", "tab:blue")
        for e in entries
    ]
    title = f"{short_key(key)}, each at its best point: mean, 95% t interval, seeds as dots"
    plot_intervals(columns, metric, title, path, width=max(5.0, 1.1 * len(entries) + 1.5))


def comparison_text(trials: Sequence[FrozenTrial], key: str, direction: str) -> str:
    """The ranking as a few console lines (``--report --compare``)."""
    entries, _ = compare(trials, key, direction)
    out = io.StringIO()
    for rank, e in enumerate(entries, 1):
        s = e.summary
        others = f" ({point_label(e.others)})" if e.others else ""
        out.write(f"{rank}. {label(e.value)}{others}: {s.mean_sd()} over {s.n} seed(s)\n")
    return out.getvalue()
