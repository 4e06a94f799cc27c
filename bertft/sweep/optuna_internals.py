"""Every part of Optuna a sweep uses beyond its documented user API, in one module.

Optuna has no public "claim this waiting trial" that holds with several writers (``Study.ask`` reads a trial's state,
then writes it: two SQLite writers can both pass the read), and no public way from a trial to its id in the storage,
which the heartbeat and the trial's pruning subprocess need. What is used instead:

* the trials table (``optuna.storages._rdb.models.TrialModel``: its ``trial_id``, ``study_id``, ``number``, ``state``
  and ``datetime_start`` columns, the last in naive UTC), for one conditional ``UPDATE`` that claims a trial;
* storage methods that are public names of :class:`optuna.storages.RDBStorage` but documented as not meant for users:
  ``get_study_id_from_name``, ``get_trial_id_from_study_id_trial_number``, ``get_trial``, ``set_trial_state_values``,
  ``record_heartbeat``, and its ``engine``;
* ``optuna.Trial(study, trial_id)``, a constructor Optuna documents as not meant to be called directly.

:func:`check` lists what of this an installed Optuna no longer has; ``tests/test_sweep_optuna.py`` runs it (and the
claim itself on a real storage) so that an Optuna release that moves any of it fails there, by name, and a sweep
refuses to start with the same message rather than failing half-way.
"""

from __future__ import annotations

import datetime
import inspect

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

#: The storage methods used, each with the parameters it is called with.
STORAGE_METHODS = {
    "get_study_id_from_name": ("study_name",),
    "get_trial_id_from_study_id_trial_number": ("study_id", "trial_number"),
    "get_trial": ("trial_id",),
    "set_trial_state_values": ("trial_id", "state"),
    "record_heartbeat": ("trial_id",),
}
#: The columns of the trials table the claim reads and writes.
TRIAL_COLUMNS = ("trial_id", "study_id", "number", "state", "datetime_start")


def check() -> list[str]:
    """What this module relies on and the installed Optuna lacks (an empty list when all is there)."""
    problems = []
    try:
        from optuna.storages._rdb.models import TrialModel

        table = TrialModel.__table__
        missing = [c for c in TRIAL_COLUMNS if c not in table.c]
        if table.name != "trials" or missing:
            problems.append(f"optuna.storages._rdb.models.TrialModel: table {table.name!r} lacks columns {missing}")
    except (ImportError, AttributeError) as err:
        problems.append(f"optuna.storages._rdb.models.TrialModel: {err}")
    for name, params in STORAGE_METHODS.items():
        method = getattr(optuna.storages.RDBStorage, name, None)
        if not callable(method):
            problems.append(f"optuna.storages.RDBStorage.{name} is gone")
            continue
        missing = [p for p in params if p not in inspect.signature(method).parameters]
        if missing:
            problems.append(f"optuna.storages.RDBStorage.{name}{inspect.signature(method)} lacks {missing}")
    params = list(inspect.signature(optuna.Trial.__init__).parameters)
    if params[1:3] != ["study", "trial_id"]:
        problems.append(f"optuna.Trial.__init__ takes {params[1:]}, not (study, trial_id)")
    return problems


def study_id(storage: optuna.storages.RDBStorage, study: optuna.Study) -> int:
    """The study's id in the storage."""
    return storage.get_study_id_from_name(study.study_name)


def trial_id(storage: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> int:
    """The id in the storage of the study's trial ``number``."""
    return storage.get_trial_id_from_study_id_trial_number(study_id(storage, study), number)


def claim_waiting(storage: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> int | None:
    """Moves trial ``number`` from WAITING to RUNNING in one conditional ``UPDATE``; its id, or None if not WAITING.

    The database applies the update once, whichever of several workers (threads, processes, machines) sends it first.
    """
    from optuna.storages._rdb.models import TrialModel

    table = TrialModel.__table__
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # the column holds naive UTC
    sid = study_id(storage, study)
    with storage.engine.begin() as connection:
        claimed = connection.execute(
            table.update()
            .where(table.c.study_id == sid, table.c.number == number, table.c.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=now)
        ).rowcount
    return storage.get_trial_id_from_study_id_trial_number(sid, number) if claimed == 1 else None


def trial_for(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The :class:`optuna.Trial` (to suggest values, set attributes, report to the pruner) of a claimed trial."""
    study.get_trials(deepcopy=False)  # a study's cached storage writes a trial's values only once it has listed it
    return optuna.Trial(study, trial_id)


def get_trial(storage: optuna.storages.RDBStorage, trial_id: int) -> FrozenTrial:
    """A trial as stored now."""
    return storage.get_trial(trial_id)


def fail_running(storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    """Fails a running trial; False when it had already finished (another worker failed it first)."""
    try:
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


def record_heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    """Records that the trial is alive now (the database's clock)."""
    storage.record_heartbeat(trial_id)
