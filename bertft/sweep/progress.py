"""The sweep's console line after each trial: where the sweep stands, the best point so far, the disk in use.

``trial 7/12 (point 3, seed 0): val/acc 0.8612 in 1 min 40 s; disk 1.64 GB; best so far point 3 (lr=3e-4): 0.8628 ±
0.008 over 3 seeds; point 3 is at the high end of model.lr``. A ``--confirm`` trial gets ``confirm 2/3 (point 3, new
seed 3): ...`` instead, without the ranking (the search's ranking does not change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bertft.io import size_text
from bertft.sweep import confirm, disk
from bertft.sweep import study as studies
from bertft.sweep.points import edge_notes, point_label, summarize_points
from bertft.sweep.spec import SweepSpec


@dataclass(frozen=True)
class Outcome:
    """How one trial ended, as the worker recorded it.

    Attributes:
        point: The trial's point.
        seed: Its seed.
        value: The metric's value (``None`` when it failed before logging one).
        wall: Seconds it ran.
        error: Why it failed; ``None`` when it did not.
        pruned: Stopped early by the pruner.
        confirming: A ``--confirm`` trial (a chosen point on a new seed).
    """

    point: int
    seed: int
    value: float | None
    wall: float
    error: str | None
    pruned: bool = False
    confirming: bool = False


def progress_line(study: Any, spec: SweepSpec, outcome: Outcome, total: int) -> str:
    """The line printed once ``outcome`` is recorded in ``study`` (and its checkpoints pruned), of ``total`` trials."""
    o = outcome
    if o.error or o.value is None:
        what = f"failed: {o.error}"
    else:
        what = f"{spec.metric} {o.value:.4g}" + (" (pruned)" if o.pruned else "")
    used = f"disk {size_text(disk.used_bytes(spec.output_dir))}"
    if o.confirming:
        confirmed = confirm.confirmation_trials(study)
        done = len({t.user_attrs["key"] for t in confirmed if studies.is_active(t) and t.state.is_finished()})
        total = len({t.user_attrs["key"] for t in confirmed if studies.is_active(t)})
        return f"confirm {done}/{total} (point {o.point}, new seed {o.seed}): {what} in {duration(o.wall)}; {used}"
    trials = studies.sweep_trials(study)
    done = len({t.user_attrs["key"] for t in trials if studies.is_active(t) and t.state.is_finished()})
    line = f"trial {done}/{total} (point {o.point}, seed {o.seed}): {what} in {duration(o.wall)}; {used}"
    rows, best = summarize_points(trials, spec.direction)  # the best point by the report's own rule
    if best is not None:
        top = next(row for row in rows if row["point"] == best)
        s = top["summary"]
        spread = f" ± {s.sd:.2g}" if s.n > 1 else ""  # shorter than summary.md's: the line is read as it scrolls by
        line += (
            f"; best so far point {best} ({point_label(top['params'])}): "
            f"{s.mean:.4g}{spread} over {s.n} seed{'s' * (s.n > 1)}"
        )
        for note in edge_notes(trials, top["params"]):  # the first clause; summary.md says what to try
            line += f"; {note.split(':')[0]}"
    return line


def duration(seconds: float) -> str:
    """``2 min 10 s``, ``1 h 3 min``, ``45 s``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
