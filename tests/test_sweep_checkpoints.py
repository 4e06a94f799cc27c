"""A sweep's disk: which checkpoints survive under each ``keep_checkpoints`` policy, the free-space check, and the
``--confirm`` seeds and figures, on a study in memory with trial folders of small stand-in checkpoint files.

The end-to-end runs (real fits, several workers, a resumed sweep, ``--test_best``) are in ``test_sweep.py``.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from bertft.io import size_text
from bertft.sweep import checkpoints, confirm, disk
from bertft.sweep import study as studies
from bertft.sweep.points import summarize_points
from bertft.sweep.trial import trial_folder

SEEDS = [0, 1]


def new_study(tmp_path: Path, direction: str = "maximize") -> optuna.Study:
    """The sweep's study; in memory, since these tests are about the files (test_sweep.py runs sweeps on SQLite)."""
    return optuna.create_study(study_name="s", direction=direction)


def params(point: int) -> dict:
    return {"model.lr": [1.0e-4, 2.0e-4, 5.0e-4][point - 1]}


def add(
    study: optuna.Study,
    out: Path,
    point: int,
    seed: int,
    state: TrialState = TrialState.COMPLETE,
    value: float | None = None,
    confirmation: bool = False,
    **attrs: object,
) -> Path:
    """A trial of (point, seed) in ``state``, and its folder as a fit leaves it: a best checkpoint and last.ckpt."""
    folder = trial_folder(out, point, seed, confirmation)
    ckpts = folder / "csv" / "version_0" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    best = ckpts / f"best-epoch0-step{seed + 2}.ckpt"
    for path in (best, ckpts / "last.ckpt"):
        path.write_bytes(b"x" * 1000)
    key = (studies.CONFIRM if confirmation else "") + studies.trial_key(params(point), seed)
    user_attrs = {"point": point, "seed": seed, "params": params(point), "key": key, "best_model_path": str(best)}
    user_attrs |= attrs
    study.add_trial(create_trial(state=state, value=value, user_attrs=user_attrs))
    return folder


def left(out: Path) -> set[str]:
    """The checkpoint files under the sweep's trial folders, as ``point1-seed0/last.ckpt``."""
    return {f"{p.relative_to(out / 'trials').parts[0]}/{p.name}" for p in checkpoints.checkpoint_files(out / "trials")}


EVERY = {f"point{p}-seed{s}/{n}" for p in (1, 2) for s in SEEDS for n in ("last.ckpt", f"best-epoch0-step{s + 2}.ckpt")}
BEST_ONLY = {"point2-seed0/best-epoch0-step2.ckpt", "point2-seed1/best-epoch0-step3.ckpt"}


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        ("best", BEST_ONLY),
        ("none", set()),
        ("all", EVERY | {"point2-seed0/best-epoch0-step1.ckpt", "point2-seed0/.last.ckpt.abc123.tmp"}),
    ],
)  # fmt: skip
def test_a_finished_2x2_sweep_keeps_what_its_policy_says(tmp_path: Path, policy: str, kept: set[str]) -> None:
    study, out = new_study(tmp_path), tmp_path / "sweep"
    for point, values in ((1, [0.80, 0.82]), (2, [0.85, 0.84])):
        for seed, value in zip(SEEDS, values, strict=True):
            add(study, out, point, seed, value=value)
    stray = trial_folder(out, 2, 0) / "csv" / "version_0" / "checkpoints"
    (stray / "best-epoch0-step1.ckpt").write_bytes(b"x")  # a second of save_top_k: 2, not what --test_best reads
    (stray / ".last.ckpt.abc123.tmp").write_bytes(b"x")  # what a killed write leaves
    freed = checkpoints.prune(study, out, SEEDS, policy, "maximize")
    assert left(out) == kept
    assert freed == (0 if policy == "all" else 8 * 1000 + 2 - 1000 * len(kept))
    if policy == "best":  # exactly the files --test_best reads: the best point's best_model_path, per seed
        _, best = summarize_points(studies.sweep_trials(study), "maximize")
        read = {
            Path(t.user_attrs["best_model_path"]) for t in studies.sweep_trials(study) if t.user_attrs["point"] == best
        }
        assert {p for p in checkpoints.checkpoint_files(out / "trials")} == read


def test_a_point_that_may_still_win_keeps_its_checkpoints(tmp_path: Path) -> None:
    """Point 1 leads after its seed 0, but only final points drop out: point 2 wins once every seed is in."""
    study, out = new_study(tmp_path), tmp_path / "sweep"
    add(study, out, 1, 0, value=0.90)
    add(study, out, 2, 0, value=0.80)
    add(study, out, 2, 1, value=0.85)
    running = add(study, out, 1, 1, state=TrialState.RUNNING)
    checkpoints.prune(study, out, SEEDS, "best", "maximize")
    assert left(out) == {
        "point1-seed0/best-epoch0-step2.ckpt",
        "point2-seed0/best-epoch0-step2.ckpt",  # point 2 is final and behind, but point 1 is not final: it may win
        "point2-seed1/best-epoch0-step3.ckpt",
        "point1-seed1/best-epoch0-step3.ckpt",  # running: untouched
        "point1-seed1/last.ckpt",
    }
    study.tell(study.get_trials(deepcopy=False)[-1].number, 0.50)  # point 1: mean 0.70 < 0.825
    checkpoints.prune(study, out, SEEDS, "best", "maximize")
    assert left(out) == {"point2-seed0/best-epoch0-step2.ckpt", "point2-seed1/best-epoch0-step3.ckpt"}
    assert not (running / "csv" / "version_0" / "checkpoints" / "last.ckpt").exists()


def test_unfinished_trials_keep_last_ckpt_for_their_resume(tmp_path: Path) -> None:
    """An interrupted attempt waiting to run again, and a trial failed for want of disk, are not final."""
    study, out = new_study(tmp_path), tmp_path / "sweep"
    add(study, out, 1, 0, state=TrialState.FAIL)  # interrupted: no error ...
    add(study, out, 1, 0, state=TrialState.WAITING, retry_of=0)  # ... and enqueued again, same folder
    add(study, out, 1, 1, state=TrialState.FAIL, error="not enough disk", retry=True)
    add(study, out, 2, 0, state=TrialState.PRUNED, pruned_value=0.5)
    add(study, out, 2, 1, state=TrialState.FAIL, error="CUDA out of memory")
    for policy in ("none", "best"):
        checkpoints.prune(study, out, SEEDS, policy, "maximize")
        assert left(out) == {
            f"point1-seed{s}/{n}" for s in SEEDS for n in ("last.ckpt", f"best-epoch0-step{s + 2}.ckpt")
        }


def test_ties_and_minimize_rank_as_the_report_does(tmp_path: Path) -> None:
    study, out = new_study(tmp_path, "minimize"), tmp_path / "sweep"
    for point, values in ((1, [0.3, 0.3]), (2, [0.2, 0.4]), (3, [0.5, 0.6])):  # 1 and 2 tie: the lower number wins
        for seed, value in zip(SEEDS, values, strict=True):
            add(study, out, point, seed, value=value)
    checkpoints.prune(study, out, SEEDS, "best", "minimize")
    assert summarize_points(studies.sweep_trials(study), "minimize")[1] == 1
    assert left(out) == {"point1-seed0/best-epoch0-step2.ckpt", "point1-seed1/best-epoch0-step3.ckpt"}


@pytest.mark.parametrize("order", range(10))
def test_whatever_the_order_and_workers_test_best_finds_its_files(tmp_path: Path, order: int) -> None:
    """3 points x 3 seeds finish in a random order, two workers pruning after each: the best point's files remain."""
    rng = random.Random(order)
    seeds = [0, 1, 2]
    study, out = new_study(tmp_path), tmp_path / "sweep"
    jobs = [(p, s, round(rng.uniform(0.5, 0.9), 2)) for p in (1, 2, 3) for s in seeds]
    rng.shuffle(jobs)
    for point, seed, _ in jobs:
        add(study, out, point, seed, state=TrialState.RUNNING)
    for number, (_, _, value) in enumerate(jobs):
        study.tell(number, value)
        workers = [
            threading.Thread(target=checkpoints.prune, args=(study, out, seeds, "best", "maximize")) for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    trials = studies.sweep_trials(study)
    _, best = summarize_points(trials, "maximize")
    read = {Path(t.user_attrs["best_model_path"]) for t in trials if t.user_attrs["point"] == best}
    assert set(checkpoints.checkpoint_files(out / "trials")) == read
    assert len(read) == 3


def test_confirmation_trials_keep_no_checkpoint_and_stay_out_of_the_ranking(tmp_path: Path) -> None:
    study, out = new_study(tmp_path), tmp_path / "sweep"
    for point, values in ((1, [0.80, 0.82]), (2, [0.85, 0.84])):
        for seed, value in zip(SEEDS, values, strict=True):
            add(study, out, point, seed, value=value)
    add(study, out, 1, 2, value=0.99, confirmation=True)  # point 1 on a new seed: not a reason to rank it first
    add(study, out, 2, 2, value=0.80, confirmation=True)  # the best point on a new seed: --test_best never reads it
    assert [t.user_attrs["seed"] for t in studies.sweep_trials(study)] == [0, 1, 0, 1]
    checkpoints.prune(study, out, SEEDS, "best", "maximize")
    assert left(out) == BEST_ONLY


# ----- disk ----------------------------------------------------------------------------------------------------------


def test_the_disk_check_says_what_is_free_and_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, out = new_study(tmp_path), tmp_path / "sweep"
    assert disk.trial_needs(checkpoints.checkpoint_size(study, out)) == disk.FLOOR  # nothing written yet
    add(study, out, 1, 0, value=0.8, checkpoint_bytes=271_000_000)
    checkpoints.prune(study, out, SEEDS, "none", "maximize")  # the files are gone; the size recorded stays
    need = disk.trial_needs(checkpoints.checkpoint_size(study, out))
    assert need == 3 * 271_000_000

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 400_000_000)
    assert disk.shortage(out, need) == (
        f"not enough disk: 400 MB free under {out}, a trial needs about 813 MB; "
        "free space or set keep_checkpoints: none"
    )
    assert "(2 at once: 1.63 GB)" in str(disk.shortage(out, need, at_once=2))
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 900_000_000)
    assert disk.shortage(out, need) is None


def test_used_bytes_is_du_apparent_size(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.ckpt").write_bytes(b"x" * 1500)
    (tmp_path / "y").write_bytes(b"y" * 500)
    assert disk.used_bytes(tmp_path) == 2000
    assert [size_text(n) for n in (999, 1500, 271_000_000, 1.23e9, 27.3e9, 123e9)] == [
        "999 B", "1.5 kB", "271 MB", "1.23 GB", "27.3 GB", "123 GB",
    ]  # fmt: skip


# ----- --confirm -----------------------------------------------------------------------------------------------------


def test_confirmation_seeds_are_new_and_each_compared_value_gets_its_point(tmp_path: Path) -> None:
    assert confirm.new_seeds([3, 0, 7], 3) == [8, 9, 10]
    study = new_study(tmp_path)
    out = tmp_path / "sweep"
    for point, values in ((1, [0.80, 0.82]), (2, [0.85, 0.84]), (3, [0.70, 0.71])):
        for seed, value in zip(SEEDS, values, strict=True):
            add(study, out, point, seed, value=value)
    points, seeds = confirm.enqueue(study, SEEDS, 3, "maximize")
    assert [p["point"] for p in points] == [2]
    assert seeds == [2, 3, 4]
    assert not set(seeds) & set(SEEDS)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["seed"] for t in waiting) == seeds
    assert all(studies.is_confirmation(t) and t.user_attrs["point"] == 2 for t in waiting)
    confirm.enqueue(study, SEEDS, 3, "maximize")  # the same command again: nothing enqueued twice
    assert len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 3
    by_lr = confirm.chosen_points(studies.sweep_trials(study), "maximize", "model.lr")
    assert [p["point"] for p in by_lr] == [2, 1, 3]  # each value of the compared key at its best point


def test_confirmation_figures_sit_beside_the_searchs(tmp_path: Path) -> None:
    study, out = new_study(tmp_path), tmp_path / "sweep"
    for seed, value in zip(SEEDS, [0.85, 0.84], strict=True):
        add(study, out, 2, seed, value=value)
    for seed, value in ((2, 0.80), (3, 0.82), (4, 0.81)):
        add(study, out, 2, seed, value=value, confirmation=True)
    rows = confirm.figures(studies.sweep_trials(study), confirm.confirmation_trials(study))
    assert [(r["point"], r["seeds"], r["search_seeds"]) for r in rows] == [(2, [2, 3, 4], [0, 1])]
    assert rows[0]["summary"].mean == pytest.approx(0.81)
    assert rows[0]["search"].mean == pytest.approx(0.845)
    text = "\n".join(confirm.confirm_markdown(rows, "val/acc"))
    assert "rerun on seeds 2-4, which the search (seeds 0, 1) never used" in text
    assert "| 2 | lr=0.0002 | 0.8100 ± 0.0100 | [0.7852, 0.8348] | 3 | 0.8450 ± 0.0071 (2) |" in text
    csv = confirm.confirm_csv(rows).splitlines()
    assert csv[0] == "point,model.lr,n,mean,sd,ci95_low,ci95_high,seeds,search_n,search_mean,search_sd,search_seeds"
    assert csv[1].startswith("2,0.0002,3,0.81,0.01,0.785159,0.834841,2 3 4,2,0.845,")
