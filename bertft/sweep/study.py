"""The sweep's Optuna study: one trial per (point, seed), claimed exactly once by whichever worker gets it first.

This is the one module that touches Optuna's private state (the trials table for the atomic claim, a study's storage,
a trial's id); the rest of :mod:`bertft.sweep` goes through its functions, and ``tests/test_sweep_optuna.py`` fails
loudly when an Optuna release changes what it relies on.

How exactly-once holds with several workers and machines on one storage:

* every (point, seed) is an Optuna trial whose user attributes hold ``point``, ``seed``, ``params`` and ``key``;
  grid points (and the further seeds of a sampled point) are enqueued as WAITING trials;
* a worker claims a WAITING trial with one conditional ``UPDATE trials SET state = RUNNING WHERE trial_id = ? AND
  state = WAITING``: the database applies it once, so no two workers get the same trial. (Optuna's own ``ask`` reads
  the state and then writes it, which two SQLite writers can both pass; it is not used to claim trials here.)
* a new ``tpe`` / ``random`` point starts as a blank WAITING trial, claimed the same way; whoever claims it samples
  the point and enqueues its other seeds;
* should two WAITING trials share a key (two machines enqueued the same grid at once), the one with the higher number
  is dropped when claimed: it is failed with ``duplicate_of`` and left out of every report;
* an interrupted trial (its process killed, its machine gone) is failed and enqueued again under its key: at once when
  its process is seen dead on this machine, and on any machine once its heartbeat is older than the grace period.
  Failed trials with an ``error`` are final: they are recorded, never re-run (except those marked ``retry``, failed
  for want of disk before they started: a resumed sweep enqueues their (point, seed) again).
* ``--confirm`` trials (new seeds at a chosen point) are trials like the others whose key starts with
  :data:`CONFIRM`; the search's ranking (:func:`sweep_trials`) leaves them out.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import time
import warnings
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages._rdb.models import TrialModel  # the trials table, for the atomic claim
from optuna.trial import FrozenTrial, TrialState

from bertft.sweep.spec import Choices, SweepError, SweepSpec

#: Seconds between a running trial's heartbeats; a trial silent for GRACE_PERIOD is taken as interrupted.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
HOST = socket.gethostname()

warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats
# The heartbeat is kept by the worker (bertft.sweep.runner) rather than by Study.optimize, which Optuna warns about.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_key(params: dict[str, Any], seed: int) -> str:
    """The identity of a (point, seed): its parameter values and its seed."""
    return json.dumps({"params": params, "seed": seed}, sort_keys=True)


def is_active(trial: FrozenTrial) -> bool:
    """Whether a trial holds or will hold its key's result: not an interrupted attempt, not a dropped duplicate."""
    if trial.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs and "retry" not in trial.user_attrs


def is_interrupted(trial: FrozenTrial) -> bool:
    """An attempt that was stopped from outside (killed, its machine lost) and enqueued again."""
    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs and "duplicate_of" not in trial.user_attrs


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueues an interrupted trial's (point, seed) again (also Optuna's heartbeat callback)."""
    attrs = {k: trial.user_attrs[k] for k in ("point", "seed", "params", "key") if k in trial.user_attrs}
    if "key" not in attrs:  # not one of the sweep's trials
        return
    study.enqueue_trial(attrs["params"], user_attrs={**attrs, "retry_of": trial.number})


#: What to install for a database driver that SQLAlchemy could not import, by the module it looked for.
_DRIVERS = {
    "psycopg": "'bertft[postgres]' (or 'psycopg[binary]')",
    "psycopg2": "'psycopg2-binary'",
    "MySQLdb": "'mysqlclient'",
    "pymysql": "'PyMySQL'",
}


def check_driver(url: str) -> None:
    """Fails with what to install when the storage URL's database driver is missing (before any trial starts).

    Raises:
        SweepError: The URL is not a database URL, or its driver is not installed.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except Exception as err:  # noqa: BLE001  # SQLAlchemy raises several kinds for an unusable URL
        raise SweepError(f"storage {url.split('@')[-1]!r} is not a database URL SQLAlchemy knows: {err}") from err
    try:
        dialect.import_dbapi()
    except ImportError as err:
        module = (err.name or str(err)).split(".")[0]
        package = _DRIVERS.get(module, f"'{module}'")
        shown = parsed.render_as_string(hide_password=True)
        raise SweepError(f"storage {shown}: its driver {module} is not installed: pip install {package}") from None


def storage_for(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; SQLite waits for a lock instead of failing when workers write at once."""
    check_driver(url)
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        grace_period=GRACE_PERIOD,
        heartbeat_stale_trial_callback=requeue,
    )


def open_study(spec: SweepSpec) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Creates the sweep's study, or loads it to resume or to join it from another machine; returns its storage too."""
    if spec.sampler == "tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)
    else:  # grid points are all enqueued; random samples the space
        sampler = optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    for attempt in range(5):
        # Several processes starting one sweep at once race to create the tables and the study: the loser retries.
        try:
            storage = storage_for(spec.storage_url)
            study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                direction=spec.direction,
                sampler=sampler,
                load_if_exists=True,
            )
            if "metric" not in study.user_attrs:
                study.set_user_attr("metric", spec.metric)
            break
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    if study.direction.name.lower() != spec.direction:
        raise SweepError(
            f"study {spec.name!r} in {spec.storage_url} was created to {study.direction.name.lower()} its metric, "
            f"this sweep file says {spec.direction}: give the sweep another name, or another output_dir"
        )
    metric = study.user_attrs.get("metric")
    if metric is not None and metric != spec.metric:
        raise SweepError(
            f"study {spec.name!r} optimises {metric}, this sweep file says {spec.metric}: rename the sweep"
        )
    return study, storage


def recover(study: optuna.Study) -> None:
    """Fails and re-enqueues interrupted trials: dead processes on this machine now, silent ones after the grace."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != HOST or "pid" not in attrs or _alive(int(attrs["pid"])):
            continue
        _interrupt(study, trial)
    optuna.storages.fail_stale_trials(study)


def interrupt(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fails a trial this worker stopped (Ctrl-C, SIGTERM) and enqueues its (point, seed) again."""
    _interrupt(study, study._storage.get_trial(trial._trial_id))


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    """Records that ``trial`` is still running (a trial silent for :data:`GRACE_PERIOD` counts as interrupted)."""
    study._storage.record_heartbeat(trial._trial_id)


def trial_id(trial: optuna.Trial) -> int:
    """The trial's id in the storage, which a trial subprocess needs to report to the pruner."""
    return int(trial._trial_id)


def _interrupt(study: optuna.Study, trial: FrozenTrial) -> None:
    if _fail(study, trial):  # False: another worker got there first, and enqueued it
        requeue(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False  # another worker got there first


def enqueue_missing(study: optuna.Study, spec: SweepSpec) -> None:
    """Enqueues every (point, seed) the sweep needs that no active trial holds yet (grid points; missing seeds)."""
    trials = study.get_trials(deepcopy=False)
    held = {t.user_attrs.get("key") for t in trials if is_active(t)}
    if spec.sampler == "grid":
        points = list(enumerate(spec.grid()[: spec.num_points], start=1))
    else:
        points = {
            (t.user_attrs["point"], json.dumps(t.user_attrs["params"], sort_keys=True))
            for t in trials
            if "point" in t.user_attrs
        }
        points = [(p, json.loads(params)) for p, params in sorted(points)]
    for point, params in points:
        for seed in spec.seeds:
            key = trial_key(params, seed)
            if key not in held:
                study.enqueue_trial(params, user_attrs={"point": point, "seed": seed, "params": params, "key": key})


def claim(study: optuna.Study, storage: optuna.storages.RDBStorage) -> optuna.Trial | None:
    """Moves one WAITING trial to RUNNING for this worker, atomically; ``None`` when none is waiting."""
    table = TrialModel.__table__
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
        with storage.engine.begin() as connection:
            claimed = connection.execute(
                table.update()
                .where(table.c.trial_id == frozen._trial_id, table.c.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=now)
            ).rowcount
        if claimed == 1:
            return _own(study, optuna.Trial(study, frozen._trial_id))
    return None


def add_blank_point(study: optuna.Study) -> None:
    """Enqueues a blank trial: a new point for the ``tpe`` / ``random`` sampler to sample when it is claimed."""
    study.enqueue_trial({}, user_attrs={"blank": True})


def sample_point(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec) -> None:
    """Samples a claimed blank trial's point as its first seed, and enqueues the point's other seeds."""
    params = suggest(trial, spec)
    seed = spec.seeds[0]
    attrs = {"point": trial.number + 1, "seed": seed, "params": params, "key": trial_key(params, seed)}
    for name, value in attrs.items():
        trial.set_user_attr(name, value)
    for other in spec.seeds[1:]:
        study.enqueue_trial(params, user_attrs={**attrs, "seed": other, "key": trial_key(params, other)})


def pending_points(study: optuna.Study) -> int:
    """Points sampled or about to be: distinct points of active trials plus blank trials not yet sampled."""
    trials = study.get_trials(deepcopy=False)
    points = {t.user_attrs["point"] for t in trials if "point" in t.user_attrs and is_active(t)}
    blanks = [t for t in trials if "blank" in t.user_attrs and "key" not in t.user_attrs and is_active(t)]
    return len(points) + len(blanks)


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's value of every searched key (fixed for an enqueued trial, sampled otherwise), encoded."""
    params: dict[str, Any] = {}
    for key, dim in spec.space.items():
        if isinstance(dim, Choices):
            params[key] = trial.suggest_categorical(key, dim.encoded)
        elif dim.integer:
            params[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def is_duplicate(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Drops a claimed trial whose key a lower-numbered active trial holds (see the module docstring)."""
    key = trial.user_attrs.get("key")
    if key is None:
        return False
    for other in study.get_trials(deepcopy=False):
        if other.number < trial.number and other.user_attrs.get("key") == key and is_active(other):
            trial.set_user_attr("duplicate_of", other.number)
            study.tell(trial, state=TrialState.FAIL)
            return True
    return False


def _own(study: optuna.Study, trial: optuna.Trial) -> optuna.Trial:
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())
    heartbeat(study, trial)
    return trial


def sweep_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The search's trials of (point, seed)s, without dropped duplicates or ``--confirm`` trials, in order."""
    trials = study.get_trials(deepcopy=False)
    return [
        t for t in trials if "key" in t.user_attrs and "duplicate_of" not in t.user_attrs and not is_confirmation(t)
    ]


#: The start of a ``--confirm`` trial's key (its point's values and a new seed): the key alone marks it, so an
#: interrupted confirmation trial enqueued again (:func:`requeue` copies the key) stays one.
CONFIRM = "confirm "


def is_confirmation(trial: FrozenTrial) -> bool:
    """Whether ``trial`` reruns a chosen point on a new seed after the search (``--confirm``)."""
    return str(trial.user_attrs.get("key", "")).startswith(CONFIRM)
