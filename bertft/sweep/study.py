"""The sweep's Optuna study: one trial per (point, seed), claimed exactly once by whichever worker gets it first.

The rest of :mod:`bertft.sweep` goes through its functions. What they need of Optuna beyond its user API (the trials
table for the atomic claim, a trial's id in the storage) is in :mod:`bertft.sweep.optuna_internals`, and
``tests/test_sweep_optuna.py`` fails loudly, by name, when an Optuna release changes it.

How exactly-once holds with several workers and machines on one storage:

* every (point, seed) is an Optuna trial whose user attributes hold ``point``, ``seed``, ``params`` and ``key``;
  grid points (and the further seeds of a sampled point) are enqueued as WAITING trials;
* a worker claims a WAITING trial with one conditional ``UPDATE trials SET state = RUNNING WHERE trial_id = ? AND
  state = WAITING``: the database applies it once, so no two workers get the same trial. (Optuna's own ``ask`` reads
  the state and then writes it, which two SQLite writers can both pass; it is not used to claim trials here.)
* a new ``tpe`` / ``random`` point starts as a blank WAITING trial for the lowest point number (``slot``) no active
  trial holds, enqueued only while fewer than ``n_trials`` points are held; it is claimed the same way, and whoever
  claims it samples the point and enqueues its other seeds;
* should two WAITING trials share a key (two machines enqueued the same grid at once) or a blank point's slot (two
  workers saw the same free slot), the one with the higher number is dropped when claimed: it is failed with
  ``duplicate_of`` and left out of every report. So the sweep runs exactly ``n_trials`` points however many workers
  race to add them;
* an interrupted trial (its process killed, its machine gone) is failed and enqueued again under its key: at once when
  its process is seen dead on this machine (:data:`MACHINE`), and on any machine once its heartbeat is older than the
  grace period. Failed trials with an ``error`` are final: they are recorded, never re-run (except those marked
  ``retry``, failed for want of disk before they started: a resumed sweep enqueues their (point, seed) again).
* ``--confirm`` trials (new seeds at a chosen point) are trials like the others whose key starts with
  :data:`CONFIRM`; the search's ranking (:func:`sweep_trials`) leaves them out.

Three environment variables tune this for every process of a sweep alike: ``BERTFT_SWEEP_HEARTBEAT`` (seconds between
a running trial's heartbeats, default 10), ``BERTFT_SWEEP_GRACE`` (seconds of silence after which a trial counts as
interrupted, default 60; keep it several heartbeats long), and ``BERTFT_SWEEP_MACHINE`` (this machine's identity, see
:data:`MACHINE`).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from bertft.sweep import optuna_internals as internals
from bertft.sweep.spec import Choices, SweepError, SweepSpec


def _seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise SweepError(f"{name}={value!r}: give a whole number of seconds, at least 1")
    return int(value)


def _machine() -> str:
    """The host name, the boot and the process namespace: where a trial's pid means the same process."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return " ".join(parts)


#: Seconds between a running trial's heartbeats (``BERTFT_SWEEP_HEARTBEAT``).
HEARTBEAT_INTERVAL = _seconds("BERTFT_SWEEP_HEARTBEAT", 10)
#: Seconds without a heartbeat after which any machine takes a running trial as interrupted (``BERTFT_SWEEP_GRACE``).
GRACE_PERIOD = _seconds("BERTFT_SWEEP_GRACE", 60)
if GRACE_PERIOD <= HEARTBEAT_INTERVAL:
    raise SweepError(
        f"BERTFT_SWEEP_GRACE={GRACE_PERIOD} must be longer than BERTFT_SWEEP_HEARTBEAT={HEARTBEAT_INTERVAL}, "
        "or running trials count as interrupted between two heartbeats"
    )
HOST = socket.gethostname()
#: Where a trial's process id is meaningful: trials started under the same identity whose process is gone are re-run at
#: once, others after :data:`GRACE_PERIOD`. Two machines with the same host name still differ (boot id). Set
#: ``BERTFT_SWEEP_MACHINE`` to have processes on one machine treat each other as other machines (the tests do).
MACHINE = os.environ.get("BERTFT_SWEEP_MACHINE") or _machine()

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
    if "key" not in attrs:  # not one of the sweep's trials, or a blank point never sampled (its slot is free again)
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
    """Creates the sweep's study, or loads it to resume or to join it from another machine; returns its storage too.

    Raises:
        SweepError: The installed Optuna lacks what the sweep relies on, or the study was made for another metric.
    """
    problems = internals.check()
    if problems:
        raise SweepError(f"optuna {optuna.__version__} changed what bertft's sweeps rely on: {'; '.join(problems)}")
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


def recover(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fails and re-enqueues interrupted trials: dead processes on this machine now, silent ones after the grace."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("machine") != MACHINE or "pid" not in attrs or _alive(int(attrs["pid"])):
            continue
        _interrupt(study, storage, internals.trial_id(storage, study, trial.number))
    optuna.storages.fail_stale_trials(study)  # calls requeue for each trial it fails


def interrupt(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> None:
    """Fails a trial this worker stopped (Ctrl-C, SIGTERM) and enqueues its (point, seed) again."""
    _interrupt(study, storage, trial_id(study, storage, trial))


def heartbeat(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> None:
    """Records that ``trial`` is still running (a trial silent for :data:`GRACE_PERIOD` counts as interrupted)."""
    internals.record_heartbeat(storage, trial_id(study, storage, trial))


def trial_id(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> int:
    """The trial's id in the storage, which a trial subprocess needs to report to the pruner."""
    return internals.trial_id(storage, study, trial.number)


def _interrupt(study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    if internals.fail_running(storage, trial_id):  # False: another worker got there first, and enqueued it
        requeue(study, internals.get_trial(storage, trial_id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        claimed = internals.claim_waiting(storage, study, frozen.number)
        if claimed is not None:
            return _own(study, storage, internals.trial_for(study, claimed))
    return None


def _slot(trial: FrozenTrial) -> int | None:
    """The point number a trial holds: its point's, or a blank trial's slot."""
    return trial.user_attrs.get("point", trial.user_attrs.get("slot"))


def add_point(study: optuna.Study, spec: SweepSpec) -> bool:
    """Enqueues a blank trial for the lowest point number no active trial holds; False when all ``n_trials`` are held.

    The sampler samples its point when it is claimed. Two workers that add one at once add the same number, and the
    later is dropped as a duplicate when claimed: numbers never pass ``n_trials``, so neither do the points.
    """
    held = {_slot(t) for t in _active(study)}
    free = [n for n in range(1, spec.num_points + 1) if n not in held]
    if not free:
        return False
    study.enqueue_trial({}, user_attrs={"blank": True, "slot": free[0]})
    return True


def take(
    study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, spec: SweepSpec
) -> optuna.Trial | None:
    """Readies a claimed trial to run: drops a duplicate, samples a blank trial's point; None when it was dropped."""
    if is_duplicate(study, trial):
        return None
    if "key" in trial.user_attrs:
        return trial
    trial = sample_point(study, storage, trial, spec)
    return None if is_duplicate(study, trial) else trial  # None: the sampler chose an earlier point's values


def sample_point(
    study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, spec: SweepSpec
) -> optuna.Trial:
    """Samples a claimed blank trial's point as its first seed, enqueues the point's other seeds; returns the trial.

    The sampler is seeded with ``sampler_seed`` and the trial's number, so that machines, each with a sampler of its
    own, do not draw the same values in lockstep, and a point dropped as a duplicate is drawn again differently.
    """
    point = int(trial.user_attrs["slot"])
    seed = (spec.sampler_seed * 1_000_003 + trial.number) % 2**32
    sampler: optuna.samplers.BaseSampler
    if spec.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    trial_id = internals.trial_id(storage, study, trial.number)
    by_point = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler)
    params = suggest(internals.trial_for(by_point, trial_id), spec)
    trial = internals.trial_for(study, trial_id)  # the worker's own study, with the values just sampled
    seed = spec.seeds[0]
    attrs = {"point": point, "seed": seed, "params": params, "key": trial_key(params, seed)}
    for name, value in attrs.items():
        trial.set_user_attr(name, value)
    if any(t.number < trial.number and t.user_attrs.get("key") == attrs["key"] for t in _active(study)):
        return trial  # a duplicate of an earlier point (dropped by the caller): no seeds of its own
    for other in spec.seeds[1:]:
        study.enqueue_trial(params, user_attrs={**attrs, "seed": other, "key": trial_key(params, other)})
    return trial


def _active(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if is_active(t)]


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
    """Drops a claimed trial whose key (or blank slot) an earlier active trial holds (see the module docstring)."""
    attrs = trial.user_attrs
    if "key" in attrs:
        same = lambda other: other.user_attrs.get("key") == attrs["key"]  # noqa: E731
    elif "slot" in attrs:
        same = lambda other: _slot(other) == attrs["slot"]  # noqa: E731
    else:
        return False
    for other in _active(study):
        if other.number < trial.number and same(other):
            trial.set_user_attr("duplicate_of", other.number)
            study.tell(trial, state=TrialState.FAIL)
            return True
    return False


def _own(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> optuna.Trial:
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("machine", MACHINE)
    trial.set_user_attr("pid", os.getpid())
    heartbeat(study, storage, trial)
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
