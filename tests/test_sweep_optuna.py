"""What bertft.sweep.study relies on in Optuna's private state, checked on a real SQLite storage.

An Optuna release that renames the trials table, a study's storage or a trial's id breaks these tests first, with the
name that moved, rather than a sweep in the middle of the night.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from bertft.sweep import study as studies


def new_study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = studies.storage_for(f"sqlite:///{tmp_path / 'sweep.db'}")
    return optuna.create_study(study_name="s", storage=storage, direction="maximize"), storage


def enqueue(study: optuna.Study, seed: int) -> None:
    params = {"model.lr": 1e-4}
    attrs = {"point": 1, "seed": seed, "params": params, "key": studies.trial_key(params, seed)}
    study.enqueue_trial(params, user_attrs=attrs)


def test_the_private_names_exist() -> None:
    from optuna.storages._rdb.models import TrialModel

    assert {"trial_id", "state", "datetime_start"} <= set(TrialModel.__table__.c.keys())
    for name in ("get_trial", "record_heartbeat", "set_trial_state_values"):
        assert callable(getattr(optuna.storages.RDBStorage, name)), name


def test_a_claimed_trial_is_running_once_with_its_id_and_heartbeat(tmp_path: Path) -> None:
    study, storage = new_study(tmp_path)
    enqueue(study, seed=0)
    trial = studies.claim(study, storage)
    assert trial is not None
    frozen = study.get_trials(deepcopy=False)[0]
    assert studies.trial_id(trial) == frozen._trial_id
    assert frozen.state == TrialState.RUNNING
    assert frozen.user_attrs["host"] == studies.HOST
    with storage.engine.connect() as connection:  # claim() records the first heartbeat
        beats = connection.exec_driver_sql("SELECT trial_id FROM trial_heartbeats").fetchall()
    assert beats == [(frozen._trial_id,)]
    assert studies.claim(study, storage) is None  # nothing else waits: no second claim of the same trial


def test_an_interrupted_trial_fails_and_its_point_and_seed_wait_again(tmp_path: Path) -> None:
    study, storage = new_study(tmp_path)
    enqueue(study, seed=3)
    trial = studies.claim(study, storage)
    assert trial is not None
    studies.heartbeat(study, trial)
    studies.interrupt(study, trial)
    first, again = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert studies.is_interrupted(first)
    assert again.state == TrialState.WAITING
    assert again.user_attrs["key"] == first.user_attrs["key"]
    assert again.user_attrs["retry_of"] == first.number
    studies.interrupt(study, trial)  # twice (two workers at once): the second does nothing
    assert len(study.get_trials(deepcopy=False)) == 2
