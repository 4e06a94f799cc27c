"""Trials of an earlier sweep, read back from its ``trials.csv``, to compare a new sweep's values with them.

A researcher who writes a new head wants it ranked against a published head study without rerunning its 50 fits:
``bertft sweep --report NEW_FOLDER --with docs/results/heads_sst2/trials.csv``. The earlier sweep's finished rows join
the comparison (``compare.md``) as points of their own, paired with the new sweep's by seed. That pairing is sound
only if a seed means the same in both (same configs, budget and data: a seed sets the batches' order), which holds for
a sweep file written to extend another one; the comparison names every file it read.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bertft.sweep.spec import SweepError, label

#: Columns every sweep's trials.csv has that are neither a searched key nor a metric.
_FIXED = ("trial", "point", "seed", "state", "wall_s", "folder", "error")


def read_trials_csv(path: Path, metric: str, known: Sequence[FrozenTrial], first_point: int) -> list[FrozenTrial]:
    """The finished trials of an earlier sweep's ``trials.csv``, as finished trials of this one.

    A column is a searched key when it is not one of the fixed columns and names no metric (metrics have a ``/``:
    ``val/acc``). Values that a trial in ``known`` has under the same label (``MeanHead``, ``0.0001``) take that trial's
    value, so one head in both sweeps is one value in the comparison; others stay as the file writes them (numbers
    read as numbers). Points are numbered from ``first_point`` on, in the file's order.

    Args:
        path: The earlier sweep's ``trials.csv``.
        metric: This sweep's metric; the file must have it as a column.
        known: This sweep's trials (for their values).
        first_point: The number of the file's first point.

    Raises:
        SweepError: The file is missing, lacks a needed column, or has a row that is not a number where one is due
            (the message names the file, the row and the column).
    """
    if not path.is_file():
        raise SweepError(f"--with {path}: no such file (give the trials.csv of an earlier sweep)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("point", "seed", "state", metric) if c not in columns]
        if missing:
            raise SweepError(
                f"--with {path}: no column {', '.join(repr(c) for c in missing)} (its columns: {', '.join(columns)}); "
                f"give the trials.csv of a sweep that measured {metric}"
            )
        keys = [c for c in columns if c not in _FIXED and "/" not in c]
        rows = list(enumerate(reader, start=2))  # row 1 is the header
    values = {key: {label(v): v for t in known for k, v in t.user_attrs["params"].items() if k == key} for key in keys}
    numbers: dict[str, int] = {}
    trials = []
    for line, row in rows:
        if row["state"] != "finished":
            continue
        try:
            value = float(row[metric])
            seed = int(row["seed"])
            point = numbers.setdefault(row["point"], first_point + len(numbers))
        except ValueError as err:
            raise SweepError(f"--with {path}, row {line}: {err} (point, seed and {metric} must be numbers)") from err
        params = {key: values[key].get(row[key], _number_or_text(row[key])) for key in keys}
        attrs: dict[str, Any] = {"point": point, "seed": seed, "params": params, "source": str(path)}
        attrs["metrics"] = {c: float(row[c]) for c in columns if "/" in c and row[c] not in ("", None)}
        trials.append(optuna.trial.create_trial(state=TrialState.COMPLETE, value=value, user_attrs=attrs))
    return trials


def merge(trials: Sequence[FrozenTrial], files: Sequence[Path], metric: str) -> list[FrozenTrial]:
    """This sweep's trials followed by those of ``files``; a (point values, seed) this sweep holds is not read twice."""
    merged = list(trials)
    for path in files:
        seen = {(_identity(t), t.user_attrs["seed"]) for t in merged if t.state == TrialState.COMPLETE}
        first = max((t.user_attrs["point"] for t in merged), default=0) + 1
        new = [
            t
            for t in read_trials_csv(Path(path), metric, merged, first)
            if (_identity(t), t.user_attrs["seed"]) not in seen
        ]
        numbers = {point: first + i for i, point in enumerate(dict.fromkeys(t.user_attrs["point"] for t in new))}
        for t in new:  # the points left after the ones this sweep holds, numbered without gaps
            t.user_attrs["point"] = numbers[t.user_attrs["point"]]
        merged += new
    return merged


def sources(trials: Sequence[FrozenTrial]) -> dict[str, tuple[int, int]]:
    """Each file the trials were read from, with the first and last point numbers it gave."""
    spans: dict[str, tuple[int, int]] = {}
    for t in trials:
        if "source" in t.user_attrs:
            low, high = spans.get(t.user_attrs["source"], (t.user_attrs["point"], t.user_attrs["point"]))
            spans[t.user_attrs["source"]] = (min(low, t.user_attrs["point"]), max(high, t.user_attrs["point"]))
    return spans


def _identity(trial: FrozenTrial) -> str:
    return repr(sorted((k, label(v)) for k, v in trial.user_attrs["params"].items()))


def _number_or_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text
