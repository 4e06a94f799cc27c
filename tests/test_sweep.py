"""``bertft sweep`` end to end on a tiny random BERT: grids over seeds, exactly-once trials, kill and resume, failures.

Every trial is a real ``python -m bertft fit`` subprocess (as users run it), so each test costs a few process starts;
the trials themselves are 2 steps on 16 real SST-2 sentences.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from bertft.cli import main
from bertft.sweep.study import is_confirmation

from .helpers import ROOT, attempts, read_csv, sweep, write_sweep


@pytest.mark.slow
def test_grid_over_seeds_two_workers_on_one_sqlite(tmp_path: Path, base_config: Path) -> None:
    """2 points x 2 seeds, started as two processes on one storage: every (point, seed) runs exactly once.

    Both processes then confirm the best point on 2 new seeds (each confirmation trial runs once), each deleting the
    checkpoints the default ``keep_checkpoints: best`` no longer needs; the same command again reruns nothing and
    ``--test_best`` tests the best point from the checkpoints that were kept.
    """
    path = write_sweep(tmp_path, base_config, space={"model.lr": [1.0e-3, 1.0e-4]}, seeds=[1, 2])
    with ThreadPoolExecutor(2) as pool:
        outputs = [result.stdout for result in pool.map(lambda _: sweep(path, "--confirm", "2"), range(2))]
    assert "(point 1, seed 1): val/acc" in "".join(outputs)
    assert re.search(r"\(point \d, seed \d\): val/acc [\d.]+ in [^;]+; disk \d[\d.]* [kMG]?B", "".join(outputs))

    out = tmp_path / "sweep"
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    search = [t for t in done if not is_confirmation(t)]
    assert sorted((t.user_attrs["point"], t.user_attrs["seed"]) for t in search) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert len(done) == 6  # and the two confirmation trials, each once (a duplicate is failed, not run)

    main(["sweep", "--report", str(out), "--compare", "model.lr"])  # as of now, whichever process finished last
    trials = read_csv(out / "trials.csv")
    assert len(trials) == 4
    assert {(r["point"], r["seed"], r["state"]) for r in trials} == {
        (p, s, "finished") for p in ("1", "2") for s in ("1", "2")
    }
    for row in trials:
        folder = Path(row["folder"])
        assert attempts(folder) == 1  # started once, by one of the two processes
        run = folder / "csv" / "version_0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        data = config["data"].get("init_args", config["data"])
        assert config["seed_everything"] == data["seed"] == int(row["seed"]), "the seed also sets the data order"
        assert (run / "metrics.csv").is_file()
        assert "test/" not in (run / "metrics.csv").read_text(), "the search never touches the test split"

    summary = read_csv(out / "summary.csv")
    assert [r["point"] for r in summary] == ["1", "2"]
    for row in summary:
        values = [float(r["val/acc"]) for r in trials if r["point"] == row["point"]]
        assert int(row["n"]) == 2
        assert float(row["mean"]) == pytest.approx(np.mean(values), abs=1e-6)
        assert float(row["sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert sum(r["best"] == "true" for r in summary) == 1
    assert "Best point" in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 1000
    assert "| rank | lr | point |" in (out / "compare.md").read_text()

    # --confirm: the best point on seeds 3 and 4, after the search's largest seed, each run once, out of the ranking
    best = next(r["point"] for r in summary if r["best"] == "true")
    assert f"confirm: point {best} (lr=" in "".join(outputs)
    assert "on 2 new seeds 3, 4, after the search's largest seed 2" in "".join(outputs)
    confirmed = read_csv(out / "confirm.csv")
    assert [(r["point"], r["n"], r["seeds"], r["search_seeds"]) for r in confirmed] == [(best, "2", "3 4", "1 2")]
    for seed in (3, 4):
        assert attempts(out / "trials" / f"confirm-point{best}-seed{seed}") == 1
    assert "## Confirmation on new seeds" in (out / "summary.md").read_text()
    assert "Each value's chosen point of `model.lr`, rerun on seeds 3, 4" in (out / "compare.md").read_text()

    # keep_checkpoints: best. What remains is exactly what --test_best reads: the best point's best checkpoints.
    def kept() -> set[Path]:
        return {p.resolve() for p in (out / "trials").rglob("*.ckpt")}

    read = {Path(r["folder"]) for r in trials if r["point"] == best}
    assert kept() == {next((f / "csv" / "version_0" / "checkpoints").glob("best-*.ckpt")).resolve() for f in read}
    again = sweep(path, "--confirm", "2", "--test_best")  # finished: nothing runs again, the best point is tested
    for folder in [*(Path(r["folder"]) for r in trials), *(out / "trials").glob("confirm-*")]:
        assert attempts(folder) == 1
    tested = read_csv(out / "test_best.csv")
    assert sorted(r["seed"] for r in tested) == ["1", "2"]
    assert {Path(r["checkpoint"]).resolve() for r in tested} == kept()
    assert f"confirmed, point {best} (lr=" in again.stdout


@pytest.mark.slow
def test_sigkill_then_resume_runs_no_finished_trial_twice(tmp_path: Path, base_config: Path) -> None:
    """SIGKILL the sweep after its first finished trial, mid-way through the second; the same command finishes it."""
    path = write_sweep(tmp_path, base_config, space={"model.lr": [1.0e-3]}, seeds=[0, 1])
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'sweep.db'}"
    running: list[optuna.trial.FrozenTrial] = []

    def kill_during_the_second_trial(proc: subprocess.Popen) -> None:
        # One worker: the second trial starts once the first finished. Its logger's folder appears once its fit runs,
        # past the imports (seconds to minutes on a loaded machine) after which it dies with the sweep.
        second = out / "trials" / "point1-seed1" / "csv"
        while not second.is_dir():
            assert proc.poll() is None, "the sweep ended before its second trial"
            time.sleep(0.2)
        running.extend(
            optuna.load_study(study_name="sweep", storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        )
        proc.send_signal(signal.SIGKILL)

    sweep(path, returncode=-signal.SIGKILL, while_running=kill_during_the_second_trial)
    first = [t for t in optuna.load_study(study_name="sweep", storage=storage).trials if t.state.name == "COMPLETE"]
    assert [(t.user_attrs["seed"]) for t in first] == [0]
    for trial in running:  # the trial's own process died with the sweep (no orphaned training)
        pid = trial.user_attrs.get("process")
        for _ in range(100):
            if pid is None or not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"trial process {pid} outlived the killed sweep")

    sweep(path)
    study = optuna.load_study(study_name="sweep", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["seed"] for t in done) == [0, 1]
    assert done[0].number == first[0].number  # the finished trial was kept, not re-run
    assert attempts(out / "trials" / "point1-seed0") == 1
    assert attempts(out / "trials" / "point1-seed1") == 2  # interrupted, then run again
    states = sorted(r["state"] for r in read_csv(out / "trials.csv"))
    assert states == ["finished", "finished", "interrupted"]
    # The one point is the best: each seed keeps the best checkpoint --test_best reads; last.ckpt went once finished.
    left = sorted(p.relative_to(out / "trials") for p in (out / "trials").rglob("*.ckpt"))
    assert [(p.parts[0], p.name.startswith("best-")) for p in left] == [("point1-seed0", True), ("point1-seed1", True)]
    assert {str(out / "trials" / p) for p in left} == {t.user_attrs["best_model_path"] for t in done}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.slow
def test_invalid_value_fails_and_the_sweep_goes_on(tmp_path: Path, base_config: Path) -> None:
    """A dropout of 1.5 parses as a float but fails when the head is built: recorded with its message.

    Two workers in one process run the two points at once; ``--test_best`` then tests the finished one.
    """
    path = write_sweep(tmp_path, base_config, space={"model.head.init_args.dropout": [0.1, 1.5]}, workers=2)
    result = sweep(path, "--test_best")
    assert "failed: " in result.stdout
    rows = {r["model.head.init_args.dropout"]: r for r in read_csv(tmp_path / "sweep" / "trials.csv")}
    assert rows["0.1"]["state"] == "finished"
    assert rows["0.1"]["error"] == ""
    assert rows["1.5"]["state"] == "failed"
    assert "dropout=1.5 must be in [0, 1)" in rows["1.5"]["error"]
    assert len(read_csv(tmp_path / "sweep" / "summary.csv")) == 1
    assert "Failed trials" in (tmp_path / "sweep" / "summary.md").read_text()
    tested = read_csv(tmp_path / "sweep" / "test_best.csv")
    assert [(r["point"], r["seed"]) for r in tested] == [("1", "0")]
    assert 0 <= float(tested[0]["test/acc"]) <= 1
    assert "test, best point 1 (dropout=0.1): test/acc" in result.stdout


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"space": {"model.lrr": [1.0e-4]}},
            "space.model.lrr is not a key of the run's config; did you mean 'model.lr'",
        ),
        ({"space": {"data.batch_sise": [8]}}, "did you mean 'data.batch_size'"),
        ({"space": {}}, "space is empty"),
        ({"space": {"model.lr": {"low": 1.0e-3, "high": 1.0e-5}}, "sampler": "tpe"}, "low 0.001 is greater than high"),
        ({"space": {"model.lr": [1.0e-4]}, "metric": "val/accuracy"}, "did you mean 'val/acc'"),
        ({"space": {"model.lr": [1.0e-4]}, "compare": "model.lrr"}, "compare: 'model.lrr' is not a key of space"),
        ({"space": {"model.lr": [1.0e-4]}, "keep_checkpoints": "last"}, "keep_checkpoints: 'last' is not one of best"),
        ({"space": {"model.lr": [1.0e-4]}, "confirm": 0}, "confirm: 0 is not a positive number of new seeds"),
        (
            {
                "space": {"model.lr": [1.0e-4, 2.0e-4], "data.batch_size": {"low": 4, "high": 8, "step": 4}},
                "sampler": "random",
                "n_trials": 5,
            },
            "n_trials: 5 is more than the 4 different points space holds",
        ),
    ],
)
def test_bad_sweep_file_one_line_no_trial(
    tmp_path: Path, base_config: Path, capsys: pytest.CaptureFixture[str], fields: dict, message: str
) -> None:
    path = write_sweep(tmp_path, base_config, **fields)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("bertft sweep: error: sweep file")
    assert message in err
    assert not (tmp_path / "sweep").exists(), "nothing may start before the sweep file is checked"


def test_test_best_needs_checkpoints_kept(tmp_path: Path, base_config: Path, capsys) -> None:
    path = write_sweep(tmp_path, base_config, space={"model.lr": [1.0e-4]}, keep_checkpoints="none")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(path), "--test_best"])
    assert exit_info.value.code == 2
    assert "sets keep_checkpoints: none (no checkpoint survives a finished trial): set keep_checkpoints: best" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "sweep").exists()


def test_a_full_disk_fails_the_trial_before_it_starts_and_stops_the_sweep(
    tmp_path: Path, base_config: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room for a trial: it is recorded as failed with the reason, nothing starts, and a resume runs it again."""
    from bertft.sweep import disk
    from bertft.sweep import study as studies
    from bertft.sweep.spec import load_spec

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 300_000_000)
    path = write_sweep(tmp_path, base_config, space={"model.lr": [1.0e-3, 1.0e-4]}, seeds=[0, 1])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(path)])
    assert exit_info.value.code == 1
    out = tmp_path / "sweep"
    reason = (
        f"not enough disk: 300 MB free under {out}, a trial needs about 1 GB; free space or set keep_checkpoints: none"
    )
    stdout = capsys.readouterr().out
    assert f"trial (point 1, seed 0): failed: {reason}; no further trial starts" in stdout
    assert "sweep stopped, no further trial started" in stdout
    rows = read_csv(out / "trials.csv")
    assert [(r["point"], r["seed"], r["state"], r["error"]) for r in rows[:1]] == [("1", "0", "failed", reason)]
    assert [r["state"] for r in rows[1:]] == ["waiting"] * 3
    assert not (out / "trials").exists(), "no trial started"
    assert reason in (out / "summary.md").read_text()

    spec = load_spec(path)  # what a resumed sweep does first: the trial that found no room waits again
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    studies.enqueue_missing(study, spec)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted((t.user_attrs["point"], t.user_attrs["seed"]) for t in waiting) == [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.parametrize(
    ("storage", "missing", "message"),
    [
        ("postgresql://bertft:secret@127.0.0.1/db", "psycopg", "pip install 'bertft[postgres]' (or 'psycopg[binary]')"),
        ("postgresql+pg8000://bertft:secret@127.0.0.1/db", None, "pg8000 is not installed: pip install 'pg8000'"),
    ],
)  # fmt: skip
def test_a_missing_database_driver_is_one_line_naming_the_package(
    tmp_path: Path, base_config: Path, capsys, monkeypatch: pytest.MonkeyPatch, storage: str, missing, message: str
) -> None:
    if missing:
        monkeypatch.setitem(sys.modules, missing, None)  # as on a machine without it: importing it fails
    path = write_sweep(tmp_path, base_config, space={"model.lr": [1.0e-4]}, storage=storage)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert "secret" not in err
    assert not (tmp_path / "sweep").exists(), "nothing may start before the storage can be opened"


def test_a_password_in_the_storage_url_gets_a_note_saying_where_it_belongs() -> None:
    from bertft.sweep.command import password_note

    assert password_note("sqlite:////tmp/sweep.db") is None
    assert password_note("postgresql+psycopg://bertft@db.example.org/sweeps") is None
    note = password_note("postgresql+psycopg://bertft:secret@db.example.org/sweeps")
    assert note is not None
    assert "PGPASSWORD" in note
    assert "secret" not in note


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"model.lr": [1.0e-4, 2.0e-4, 3.0e-4]}, 3),  # fewer than the default 10: each once, then the sweep ends
        ({"model.lr": [1.0e-4, 2.0e-4], "data.batch_size": {"low": 2, "high": 16, "step": 2}}, 10),
        ({"model.lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True}}, 10),  # continuous: no bound
        ({"model.dropout": {"low": 0.0, "high": 0.3, "step": 0.1}}, 4),
    ],
)
def test_sampled_sweep_runs_no_more_points_than_its_space_holds(
    tmp_path: Path, base_config: Path, space: dict, expected: int
) -> None:
    """Without n_trials, a random/tpe sweep over a small finite space runs each point once instead of looping."""
    from bertft.sweep.spec import load_spec

    spec = load_spec(write_sweep(tmp_path, base_config, space=space, sampler="random"))
    assert spec.num_points == expected


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_check(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sweep in configs/sweeps/ passes the checks a run makes before its first trial (keys, values, metric)."""
    from bertft.sweep.spec import load_spec
    from bertft.sweep.validate import check_spec

    monkeypatch.chdir(ROOT)  # sweep files name their configs from the repository root, as the README runs them
    spec = load_spec(path)
    check_spec(spec)
    assert spec.metric in ("val/acc", "val/spearman", "val/f1")  # classification, STS-B, CoNLL-2003
    assert spec.direction == "maximize"
    stated = re.search(r"= (\d+) (?:short )?fits", path.read_text(encoding="utf-8"))
    assert stated, f"{path.name}: its first comment says how many fits it runs"
    assert spec.num_points * len(spec.seeds) == int(stated.group(1))
