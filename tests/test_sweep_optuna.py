"""What bertft.sweep.study relies on in Optuna beyond its user API (bertft/sweep/optuna_internals.py), checked on
real storages: SQLite, and PostgreSQL where the server is installed.

An Optuna release that renames the trials table or its columns, a storage method or the ``Trial`` constructor's
parameters breaks these tests first, with the name that moved, rather than a sweep in the middle of the night.
"""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bertft.sweep import optuna_internals as internals
from bertft.sweep import study as studies
from bertft.sweep.spec import Choices, Range, SweepSpec


def new_study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = studies.storage_for(f"sqlite:///{tmp_path / 'sweep.db'}")
    return optuna.create_study(study_name="s", storage=storage, direction="maximize"), storage


def enqueue(study: optuna.Study, seed: int) -> None:
    params = {"model.lr": 1e-4}
    attrs = {"point": 1, "seed": seed, "params": params, "key": studies.trial_key(params, seed)}
    study.enqueue_trial(params, user_attrs=attrs)


def test_what_sweeps_rely_on_in_optuna_is_there() -> None:
    problems = internals.check()
    assert not problems, f"optuna {optuna.__version__} changed: " + "; ".join(problems)


def test_the_check_names_what_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna.storages.RDBStorage, "get_trial", lambda self, number: None)  # renamed its parameter
    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", None)
    assert internals.check() == [
        "optuna.storages.RDBStorage.get_trial(self, number) lacks ['trial_id']",
        "optuna.storages.RDBStorage.record_heartbeat is gone",
    ]


def test_a_claimed_trial_is_running_once_with_its_id_and_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # not UTC: the claim must store its start time as Optuna does
    time.tzset()
    try:
        study, storage = new_study(tmp_path)
        enqueue(study, seed=0)
        trial = studies.claim(study, storage)
        assert trial is not None
        frozen = study.get_trials(deepcopy=False)[0]
        started = datetime.datetime.now() - frozen.datetime_start
    finally:
        monkeypatch.undo()
        time.tzset()
    assert abs(started.total_seconds()) < 60, f"start time off by {started}: the column's time zone changed"
    trial_id = studies.trial_id(study, storage, trial)
    assert internals.get_trial(storage, trial_id).number == frozen.number == trial.number
    assert frozen.state == TrialState.RUNNING
    assert frozen.user_attrs["host"] == studies.HOST
    assert frozen.user_attrs["machine"] == studies.MACHINE
    with storage.engine.connect() as connection:  # claim() records the first heartbeat
        beats = connection.exec_driver_sql("SELECT trial_id FROM trial_heartbeats").fetchall()
    assert beats == [(trial_id,)]
    assert studies.claim(study, storage) is None  # nothing else waits: no second claim of the same trial


def test_an_interrupted_trial_fails_and_its_point_and_seed_wait_again(tmp_path: Path) -> None:
    study, storage = new_study(tmp_path)
    enqueue(study, seed=3)
    trial = studies.claim(study, storage)
    assert trial is not None
    studies.heartbeat(study, storage, trial)
    studies.interrupt(study, storage, trial)
    first, again = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert studies.is_interrupted(first)
    assert again.state == TrialState.WAITING
    assert again.user_attrs["key"] == first.user_attrs["key"]
    assert again.user_attrs["retry_of"] == first.number
    studies.interrupt(study, storage, trial)  # twice (two workers at once): the second does nothing
    assert len(study.get_trials(deepcopy=False)) == 2


def run_workers(spec: SweepSpec, workers: int) -> None:
    """Workers, each with a study of its own on the spec's storage (as on separate machines), all start at once and
    loop as a sweep's worker does (claim, else add a point while fewer than n_trials are held); each trial 'runs' by
    being told a value."""
    spec.metric, spec.direction = "val/acc", "maximize"
    studies.open_study(spec)
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            study, storage = studies.open_study(spec)
            start.wait()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                trial = studies.claim(study, storage)
                if trial is None and studies.add_point(study, spec):
                    continue
                if trial is None:
                    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
                        return
                    time.sleep(0.05)
                    continue
                trial = studies.take(study, storage, trial, spec)
                if trial is not None:
                    study.tell(trial, float(trial.number))
            errors.append(TimeoutError("the workers did not finish within 240 s"))
        except BaseException as err:  # noqa: BLE001  # the test thread reports it
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(270)
    assert not errors, errors


def new_spec(tmp_path: Path, url: str, **fields: object) -> SweepSpec:
    return SweepSpec(
        path=tmp_path / "sweep.yaml", name="race", configs=[], overrides={}, output_dir=tmp_path, storage=url, **fields
    )


@pytest.mark.parametrize(("backend", "sampler"), [("sqlite", "random"), ("postgresql", "tpe")])
def test_racing_workers_sample_exactly_n_trials_points(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, sampler: str
) -> None:
    """Four workers race on one storage: exactly n_trials points run, each once per seed."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    space = {"model.lr": Range(1.0e-5, 1.0e-3, log=True)}
    run_workers(new_spec(tmp_path, url, space=space, seeds=[0, 1], sampler=sampler, n_trials=5), workers=4)
    done = [t for t in optuna.load_study(study_name="race", storage=url).trials if t.state == TrialState.COMPLETE]
    pairs = sorted((t.user_attrs["point"], t.user_attrs["seed"]) for t in done)
    assert pairs == [(p, s) for p in range(1, 6) for s in (0, 1)], pairs
    assert len({t.user_attrs["key"] for t in done}) == 10
    for point in range(1, 6):  # the seeds of a point share its sampled values
        assert len({t.user_attrs["params"]["model.lr"] for t in done if t.user_attrs["point"] == point}) == 1


def test_a_point_sampled_twice_is_drawn_again(tmp_path: Path) -> None:
    """Three choices, three points: duplicates the sampler draws are dropped and drawn anew until all three ran."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    space = {"model.head": Choices(("mean", "max", "cls"))}
    run_workers(new_spec(tmp_path, url, space=space, seeds=[0], sampler="random", n_trials=3), workers=1)
    done = [t for t in optuna.load_study(study_name="race", storage=url).trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["params"]["model.head"] for t in done) == ["cls", "max", "mean"]
    assert sorted(t.user_attrs["point"] for t in done) == [1, 2, 3]
