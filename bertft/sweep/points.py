"""A sweep's points: results over seeds, labels and trial states.

Shared by the report, the comparison, the progress line and ``--test_best``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from bertft.sweep import study as studies
from bertft.sweep.spec import label, short_key
from bertft.sweep.stats import paired_t_test, summarize

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


def edge_notes(trials: Sequence[FrozenTrial], params: dict[str, Any]) -> list[str]:
    """Says where a point sits at the low or high end of a numeric key's searched values, and what to try next.

    A best point at the edge of what was searched (every head best at the grid's top learning rate) means the best
    may lie beyond it. ``trials`` are the trials whose values count as searched (all of a sweep's, or those of one
    compared value); ``params`` is the point's values.

    Returns:
        One sentence per such key, e.g. ``lr=0.0002 is the highest value searched (0.0001, 0.0002): the best may lie
        higher; try lr: [0.0002, 0.0004, 0.0008]``. Empty when no numeric key has two values or more.
    """
    tried: dict[str, set[float]] = {}
    for trial in trials:
        for key, value in trial.user_attrs.get("params", {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                tried.setdefault(key, set()).add(value)
    notes = []
    for key, value in params.items():
        values = sorted(tried.get(key, ()))
        if len(values) < 2 or value not in (values[0], values[-1]):
            continue
        high = value == values[-1]
        note = (
            f"{short_key(key)}={label(value)} is the {'highest' if high else 'lowest'} value searched "
            f"({', '.join(label(v) for v in values)}): the best may lie {'higher' if high else 'lower'}"
        )
        beyond = _beyond(values, high)
        if values[0] >= 0:  # a key searched at 0 and up (dropout, a rate) is not tried below zero
            beyond = [v for v in beyond if v >= 0]
        if len(values) <= 6 and len(beyond) > 1:  # a grid; a sampled range's neighbouring values say little
            note += f"; try {short_key(key)}: [{', '.join(label(v) for v in beyond)}]"
        notes.append(note)
    return notes


def _beyond(values: list[float], high: bool) -> list[float]:
    """Three values from the edge outwards, spaced as the searched value next to it (by ratio for learning rates)."""
    edge, near = (values[-1], values[-2]) if high else (values[0], values[1])
    if edge > 0 and near > 0 and max(edge, near) / min(edge, near) >= 1.5:
        factor = edge / near
        steps = [edge * factor**i for i in range(3)]
    else:
        step = edge - near
        steps = [edge + step * i for i in range(3)]
    if all(isinstance(v, int) for v in values):
        steps = [round(v) for v in steps]
    return steps if high else steps[::-1]
