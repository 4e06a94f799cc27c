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
