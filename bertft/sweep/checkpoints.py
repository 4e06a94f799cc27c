"""Which checkpoints a sweep's finished trials keep: ``keep_checkpoints: best | all | none``.

Every trial writes its best checkpoint and ``last.ckpt``, each the weights and the optimiser's state (271 MB for the
packaged MiniLM fine-tuned): kept for every trial, the 50-trial SST-2 head study took 27 GB. Once a trial's result is
recorded, :func:`prune` deletes what no later step reads:

* ``last.ckpt`` is read only to resume an interrupted trial: it goes once the trial is final (finished, pruned, or
  failed with an error, none of which is ever run again);
* ``--test_best`` reads exactly one file per finished seed of the best point: that trial's ``best_model_path``. Under
  ``best`` that file is kept for every point that may still become the best, and deleted once the point cannot: when
  all its seeds are final and another point whose seeds are all final ranks above it (by the report's rule: mean over
  finished seeds, the lower point number on a tie). Every other checkpoint of a final trial goes (the further ones of
  a ``save_top_k`` above 1, those of pruned and failed trials and of ``--confirm`` trials);
* ``--report`` reads only the storage.

Under ``none`` no checkpoint survives a final trial; ``all`` deletes nothing (every trial's best and last, as before).

Several workers and machines may prune at once. Each decision rests only on facts that never change again once seen
in the storage (a final trial stays final; a final point's mean stays what it is), so no worker deletes a file that a
running or waiting trial, a resume, or another worker's later decision still needs; a file already gone is fine.
Each machine deletes only in its own sweep folder, where its trials ran. A resumed sweep that lists more seeds makes
points open again, but what was deleted stays deleted: ``--test_best`` then skips those seeds and says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from bertft.sweep import study as studies
from bertft.sweep.points import point_results
from bertft.sweep.stats import summarize
from bertft.sweep.trial import trial_folder

#: The user attribute in which a finished trial records the size of its largest checkpoint (bytes), so that the
#: sweep can tell how much a trial writes after the files are gone (:func:`checkpoint_size`).
SIZE_ATTR = "checkpoint_bytes"


def checkpoint_files(folder: Path) -> Iterator[Path]:
    """Every checkpoint under a trial's folder, and the hidden temporary file of one a killed write left behind."""
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".ckpt") or (name.startswith(".") and ".ckpt." in name and name.endswith(".tmp")):
                yield Path(root) / name


def record_size(trial: optuna.Trial, folder: Path) -> None:
    """Stores the size of the largest checkpoint in ``folder`` on ``trial`` (before :func:`prune` may delete it)."""
    sizes = [_size(path) for path in checkpoint_files(folder)]
    if any(sizes):
        trial.set_user_attr(SIZE_ATTR, max(sizes))


def checkpoint_size(study: optuna.Study, output_dir: Path) -> int | None:
    """The size of one of this sweep's checkpoints (bytes): the largest a trial recorded or this folder holds.

    ``None`` before any trial wrote one.
    """
    recorded = [int(t.user_attrs[SIZE_ATTR]) for t in study.get_trials(deepcopy=False) if SIZE_ATTR in t.user_attrs]
    present = [_size(path) for path in checkpoint_files(Path(output_dir) / "trials")]
    return max([*recorded, *present], default=0) or None


def prune(study: optuna.Study, output_dir: Path, seeds: Sequence[int], policy: str, direction: str) -> int:
    """Deletes the checkpoints of final trials that ``policy`` does not keep (see the module docstring).

    Args:
        study: The sweep's study; read once, here.
        output_dir: This machine's sweep folder (trial folders are found under it by point and seed).
        seeds: The sweep's seeds: a point is final once each of them is.
        policy: ``best``, ``all`` or ``none``.
        direction: ``maximize`` or ``minimize``, to rank points as the report does.

    Returns:
        The bytes deleted.
    """
    if policy == "all":
        return 0
    trials = [t for t in study.get_trials(deepcopy=False) if "key" in t.user_attrs]
    by_key: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if studies.is_active(trial):
            by_key.setdefault(trial.user_attrs["key"], []).append(trial)
    final = {key: min(group, key=lambda t: t.number) for key, group in by_key.items() if all(map(_final, group))}
    keep_points = _open_points(list(final.values()), by_key, seeds, direction) if policy == "best" else set()
    freed = 0
    for trial in final.values():  # one per key: the trial that ran (a duplicate's is the lower number)
        attrs = trial.user_attrs
        confirmation = studies.is_confirmation(trial)
        folder = trial_folder(output_dir, attrs["point"], attrs["seed"], confirmation)
        if not folder.is_dir():
            continue  # another machine ran it, or nothing was written
        keep = None
        best = attrs.get("best_model_path")
        if best and trial.state == TrialState.COMPLETE and attrs["point"] in keep_points and not confirmation:
            keep = Path(best).resolve()  # exactly what --test_best reads (the search's trials, never a confirmation)
        for path in checkpoint_files(folder):
            if path.resolve() != keep:
                freed += _delete(path)
    return freed


def _final(trial: FrozenTrial) -> bool:
    """Recorded for good: finished, pruned, or failed with an error (the sweep never runs its key again)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and studies.is_active(trial)
    )


def _open_points(
    final: list[FrozenTrial], active: dict[str, list[FrozenTrial]], seeds: Sequence[int], direction: str
) -> set[int]:
    """The search's points that may still be the best: all but the final ones a final point ranks above."""
    search = [t for t in final if not studies.is_confirmation(t)]
    points = {t.user_attrs["point"] for group in active.values() for t in group if not studies.is_confirmation(t)}
    done: dict[int, set[int]] = {}
    for trial in search:
        done.setdefault(trial.user_attrs["point"], set()).add(trial.user_attrs["seed"])
    # A point is final when every seed's key has a final trial; keys of active trials not yet final are not in
    # `final`, so an unfinished seed keeps its point open.
    closed = {p for p, got in done.items() if set(seeds) <= got}
    sign = 1 if direction == "maximize" else -1
    ranked = [
        (-sign * summarize(r["values"]).mean, r["point"])
        for r in point_results([t for t in search if t.user_attrs["point"] in closed])
    ]
    if not ranked:
        return points
    leader = min(ranked)[1]  # the first of the final points by the report's rule: it ranks above the others for good
    beaten = {point for _, point in ranked if point != leader}
    beaten |= closed - {point for _, point in ranked}  # final with no finished seed: never the best
    return points - beaten


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # deleted meanwhile by another worker
        return 0


def _delete(path: Path) -> int:
    size = _size(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
