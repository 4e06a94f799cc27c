"""``bertft sweep`` on a real PostgreSQL server, from two processes that stand for two machines.

Each process has its own output folder and its own machine identity (``BERTFT_SWEEP_MACHINE``), so neither sees the
other's process ids: a killed one's trial is found only when its heartbeat stops, as on a real second machine. The
heartbeat is 1 s and the grace 5 s here (60 s by default), so that takes seconds. The server comes from the
``postgres_url`` fixture (``tests/helpers/postgres.py``), the sweep's fit config from the ``base_config`` fixture, and
the sweep's files from ``tests/helpers/sweeps.py``.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bertft.cli import main

from .helpers import ROOT, attempts, read_csv, run_bertft, write_sweep

TIMEOUT = 300  # seconds for one sweep command; each trial takes seconds
GRACE = 5


def machine(name: str, **env: str) -> dict[str, str]:
    """The environment of the sweep process that plays machine ``name``."""
    return {
        "PYTHONPATH": str(ROOT),
        "BERTFT_SWEEP_MACHINE": f"machine-{name}",
        "BERTFT_SWEEP_HEARTBEAT": "1",
        "BERTFT_SWEEP_GRACE": str(GRACE),
        **env,
    }


def sweep_on(name: str, path: Path, *extra: str, **options) -> subprocess.CompletedProcess:
    """``bertft sweep --config <path> --output_dir <its folder>/<name>`` as machine ``name`` runs it."""
    folder = path.parent / name
    options = {"timeout": TIMEOUT, "cwd": path.parent, "env": machine(name), **options}
    return run_bertft("sweep", "--config", str(path), "--output_dir", str(folder), *extra, **options)


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The sweep's trials in the database ([] before the first process created the study)."""
    try:
        return optuna.load_study(study_name="sweep", storage=url).get_trials(deepcopy=False)
    except KeyError:
        return []


def test_the_server_checks_the_password_the_urls_leave_out(postgres_url: str, monkeypatch) -> None:
    """The fixture's URLs hold no password and the server demands one: the sweeps here get it from PGPASSWORD, as the
    sweeps guide tells users to, so that it stays out of sweep files, sweep.json and trial command lines."""
    import sqlalchemy

    assert ":" not in postgres_url.split("//", 1)[1].split("@", 1)[0], "the URL holds no password"
    with sqlalchemy.create_engine(postgres_url).connect() as connection:
        assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        sqlalchemy.create_engine(postgres_url).connect()


@pytest.mark.slow
def test_two_machines_run_each_point_and_seed_once_and_take_over_a_killed_ones_trial(
    tmp_path: Path, base_config: Path, postgres_url: str
) -> None:
    """2 points x 2 seeds from two processes on one PostgreSQL database. Machine a is killed (SIGKILL) mid-trial once
    b has joined; b runs a's trial again once its heartbeat is GRACE s old, and finishes the sweep."""
    path = write_sweep(tmp_path, base_config, space={"model.lr": [1.0e-3, 1.0e-4]}, seeds=[1, 2], storage=postgres_url)
    killed: list[optuna.trial.FrozenTrial] = []
    killed_at: list[datetime.datetime] = []

    def kill_a_mid_trial(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert proc.poll() is None, "machine a ended before the test could kill it mid-trial"
            running = [t for t in trials(postgres_url) if t.state == TrialState.RUNNING and "process" in t.user_attrs]
            on_a = [t for t in running if t.user_attrs["machine"] == "machine-a"]
            if on_a and (tmp_path / "b" / "sweep.json").is_file():  # a runs a trial, and b has joined the sweep
                proc.send_signal(signal.SIGKILL)  # its fit started: mid-trial (and the fit dies with the sweep)
                killed.append(on_a[0])
                killed_at.append(datetime.datetime.now())
                return
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(sweep_on, "a", path, returncode=-signal.SIGKILL, while_running=kill_a_mid_trial)
        time.sleep(1)
        b = pool.submit(sweep_on, "b", path)
        a.result()
        b_result = b.result()
    assert killed, "machine a was never seen running a trial once b had joined"
    (lost,) = killed

    every = trials(postgres_url)
    done = [t for t in every if t.state == TrialState.COMPLETE]
    assert sorted((t.user_attrs["point"], t.user_attrs["seed"]) for t in done) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    again = [t for t in done if t.user_attrs["key"] == lost.user_attrs["key"]]
    assert [t.user_attrs["machine"] for t in again] == ["machine-b"]
    assert again[0].user_attrs["retry_of"] == lost.number
    stopped = next(t for t in every if t.number == lost.number)
    assert stopped.state == TrialState.FAIL
    assert "error" not in stopped.user_attrs  # interrupted, not failed
    waited = (stopped.datetime_complete - killed_at[0]).total_seconds()
    assert waited >= GRACE - 2, f"a's trial was failed {waited:.1f} s after the kill: before its heartbeat expired?"
    for trial in done:  # each machine writes into its own folder
        assert Path(trial.user_attrs["folder"]).parent.parent.name == trial.user_attrs["machine"][-1]
    lost_folder = f"point{lost.user_attrs['point']}-seed{lost.user_attrs['seed']}"
    assert attempts(tmp_path / "a" / "trials" / lost_folder) == 1
    assert attempts(tmp_path / "b" / "trials" / lost_folder) == 1
    assert "trial 4/4" in b_result.stdout

    for name in ("a", "b"):  # either machine's --report sees every trial
        main(["sweep", "--report", str(tmp_path / name)])
        rows = read_csv(tmp_path / name / "trials.csv")
        assert sorted(r["state"] for r in rows) == ["finished"] * 4 + ["interrupted"]
        assert len(read_csv(tmp_path / name / "summary.csv")) == 2


@pytest.mark.slow
def test_two_machines_with_two_workers_each_sample_exactly_n_trials_points(
    tmp_path: Path, base_config: Path, postgres_url: str
) -> None:
    """tpe, n_trials 3, one seed: two processes of 2 workers each, started at once, run exactly 3 points."""
    path = write_sweep(
        tmp_path, base_config, space={"model.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}, seeds=[0],
        sampler="tpe", n_trials=3, workers=2, storage=postgres_url,
    )  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda name: sweep_on(name, path), ("a", "b")))
    done = [t for t in trials(postgres_url) if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["point"] for t in done) == [1, 2, 3]
    assert len({t.user_attrs["key"] for t in done}) == 3
    main(["sweep", "--report", str(tmp_path / "a")])
    assert len(read_csv(tmp_path / "a" / "summary.csv")) == 3
