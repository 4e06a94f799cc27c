"""Running a sweep: worker threads, each running one trial at a time as a ``fit`` subprocess in its own folder.

A trial is ``python -m bertft fit --config <the run's configs> --config <trial folder>/sweep_trial.yaml`` (the point's
values, its seed, its folder, no test split) with :class:`~bertft.sweep.trial.SweepTrial` appended to the callbacks;
``command.txt`` in the folder re-runs it alone. Each subprocess gets ``cores / workers`` threads. While it runs, the
worker keeps the trial's heartbeat, enforces ``trial_timeout``, and on Ctrl-C / SIGTERM stops it and enqueues it again.

Before a trial starts, the worker checks that the disk has room for it (:mod:`bertft.sweep.disk`): if not, the trial
is recorded as failed with the reason (a resumed sweep runs it again) and no further trial starts here. Once a
trial's result is recorded, the checkpoints the sweep's ``keep_checkpoints`` policy no longer needs are deleted
(:mod:`bertft.sweep.checkpoints`). With ``confirm``, the workers then run the chosen point(s) on new seeds
(:mod:`bertft.sweep.confirm`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bertft.sweep import checkpoints, confirm, disk
from bertft.sweep import study as studies
from bertft.sweep.points import point_label
from bertft.sweep.progress import Outcome, progress_line
from bertft.sweep.report import write_report
from bertft.sweep.spec import SweepSpec
from bertft.sweep.trial import error_line, stop_process, trial_args, trial_folder, trial_process
from bertft.sweep.validate import overlay_yaml
from bertft.training.faults import find_last_checkpoint

#: Seconds a worker waits before looking again for work, while other workers' trials run.
POLL = 2.0


class Sweep:
    """One machine's share of a sweep: ``spec.workers`` threads taking (point, seed) trials until none is left.

    Args:
        spec: The checked sweep (metric and direction filled in).
        study: Its Optuna study.
        storage: The study's storage (trials are claimed through its database connection).
    """

    def __init__(self, spec: SweepSpec, study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
        self.spec = spec
        self.study = study
        self.storage = storage
        self.stop = threading.Event()
        self.lock = threading.Lock()  # one progress line and one report rewrite at a time
        self.threads = max(
            1,
            (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // spec.workers,
        )
        self.total = spec.num_points * len(spec.seeds)
        self.finished = False  # every (point, seed) done, rather than stopped
        self.halted: str | None = None  # why no further trial starts on this machine (the disk is full)

    def run(self) -> None:
        """Runs the workers to the end (or until :attr:`stop` is set), then any confirmation; rewrites the report."""
        studies.recover(self.study, self.storage)
        studies.enqueue_missing(self.study, self.spec)
        self._prune()  # what an earlier run of the same command left (it may have been stopped before pruning)
        workers: list[threading.Thread] = []
        try:
            workers = self._start_workers()
            self._join(workers)
            if self.spec.confirm and not self.stop.is_set() and self.halted is None:
                self._enqueue_confirmation()
                workers = self._start_workers()
                self._join(workers)
            self.finished = not self.stop.is_set() and self.halted is None
        finally:
            self.stop.set()
            for worker in workers:
                worker.join()
            self._prune()
            with self.lock:
                write_report(
                    self.study, self.spec.output_dir, self.spec.metric, self.spec.direction, compare=self.spec.compare
                )

    def _start_workers(self) -> list[threading.Thread]:
        workers = [
            threading.Thread(target=self._work, name=f"worker-{i}", daemon=True) for i in range(self.spec.workers)
        ]
        for worker in workers:
            worker.start()
        return workers

    def _join(self, workers: list[threading.Thread]) -> None:
        while any(w.is_alive() for w in workers):
            time.sleep(0.5)

    def _enqueue_confirmation(self) -> None:
        spec = self.spec
        points, seeds = confirm.enqueue(
            self.study, spec.seeds, int(spec.confirm or 0), str(spec.direction), spec.compare
        )
        for chosen in points:
            print(
                f"confirm: point {chosen['point']} ({point_label(chosen['params'])}) on {len(seeds)} new seeds "
                f"{', '.join(map(str, seeds))}, after the search's largest seed {max(spec.seeds)}",
                flush=True,
            )

    def _prune(self) -> None:
        spec = self.spec
        checkpoints.prune(self.study, spec.output_dir, spec.seeds, spec.keep_checkpoints, str(spec.direction))

    # ----- one worker ------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        last_recover = time.monotonic()
        while not self.stop.is_set() and self.halted is None:
            if time.monotonic() - last_recover > studies.HEARTBEAT_INTERVAL:
                studies.recover(self.study, self.storage)
                last_recover = time.monotonic()
            trial = studies.claim(self.study, self.storage)
            sampled = self.spec.sampler != "grid"
            if trial is None and sampled and studies.add_point(self.study, self.spec):
                continue  # a blank point, claimed like any other trial, then sampled
            if trial is None:
                if not self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    return  # nothing waits, nothing runs: the sweep is done
                self.stop.wait(POLL)  # a running trial may yet be interrupted and enqueued again
                continue
            try:
                trial = studies.take(self.study, self.storage, trial, self.spec)
                if trial is None:  # a duplicate, dropped
                    continue
                if self._short_of_disk(trial):
                    continue
                self._run_trial(trial)
            except Exception as err:  # the sweep's own failure (storage, disk): record it on the trial, go on
                message = f"sweep error: {type(err).__name__}: {err}"
                print(f"trial {trial.number}: {message}", file=sys.stderr, flush=True)
                try:
                    trial.set_user_attr("error", message)
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                except Exception:
                    self.stop.set()  # the storage is gone: stop; the same command resumes
                    raise

    def _short_of_disk(self, trial: optuna.Trial) -> bool:
        """Fails a claimed trial before it starts when the disk lacks room for it, and stops this machine's workers.

        The trial is marked ``retry``: once space is freed, the same command runs it (failed trials are otherwise
        final).
        """
        spec = self.spec
        need = disk.trial_needs(checkpoints.checkpoint_size(self.study, spec.output_dir))
        reason = disk.shortage(spec.output_dir, need, spec.workers)
        if reason is None:
            return False
        self.halted = reason
        where = f"point {trial.user_attrs['point']}, seed {trial.user_attrs['seed']}"
        print(f"trial ({where}): failed: {reason}; no further trial starts", flush=True)
        trial.set_user_attr("error", reason)
        trial.set_user_attr("retry", True)
        self.study.tell(trial, state=TrialState.FAIL)
        return True

    def _run_trial(self, trial: optuna.Trial) -> None:
        spec = self.spec
        params = studies.suggest(trial, spec)
        point, seed = int(trial.user_attrs["point"]), int(trial.user_attrs["seed"])
        confirming = studies.is_confirmation(trial)
        folder = trial_folder(spec.output_dir, point, seed, confirming)
        folder.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("folder", str(folder))
        result_file = folder / "result.json"
        result_file.unlink(missing_ok=True)
        command = self._command(trial, params, seed, folder, result_file)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "PYTHONUNBUFFERED": "1",
            "WANDB_RUN_GROUP": spec.name,
            "WANDB_NAME": f"{spec.name}-point{point}-seed{seed}",
            "WANDB_TAGS": f"sweep-{spec.name},point-{point},seed-{seed}",
        }
        start = time.monotonic()
        with open(folder / "trial.log", "a", encoding="utf-8") as log:
            log.write(f"\n===== trial {trial.number} on {studies.HOST}: {shlex.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            trial.set_user_attr("process", proc.pid)
            outcome = self._wait(proc, trial, start)
        wall = time.monotonic() - start
        trial.set_user_attr("wall_s", round(wall, 1))
        if outcome == "interrupted":
            studies.interrupt(self.study, self.storage, trial)
            return
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        value = result.get("value")
        if result.get("metrics"):
            trial.set_user_attr("metrics", result["metrics"])
        if result.get("best_model_path"):
            trial.set_user_attr("best_model_path", result["best_model_path"])
        error = outcome or error_line(folder / "trial.log", proc.returncode)
        if proc.returncode == 0 and (value is None or not math.isfinite(value)):
            error = f"{spec.metric} was never logged with a finite value (is it a metric of this task?)"
        checkpoints.record_size(trial, folder)  # how much a trial writes, for the disk check once the files are gone
        if error:
            trial.set_user_attr("error", error)
            self.study.tell(trial, state=TrialState.FAIL)
        elif result.get("pruned"):
            trial.set_user_attr("pruned_value", value)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, value)
        self._prune()  # the result is recorded: what no later step reads can go
        self._progress(point, seed, value, wall, error, bool(result.get("pruned")), confirming)

    def _command(
        self, trial: optuna.Trial, params: dict[str, Any], seed: int, folder: Path, result_file: Path
    ) -> list[str]:
        spec = self.spec
        settings = {
            # The seed also sets the order of the training batches (Dodge et al. 2020: as large a source of variance
            # as the head's initialisation), unless the sweep fixes data.seed itself.
            "data.seed": seed,
            **spec.overrides,
            **params,
            "seed_everything": seed,
            "trainer.default_root_dir": str(folder),
            "data.test_file": None,  # never the test split during the search (--test_best runs it afterwards)
        }
        overlay = folder / "sweep_trial.yaml"
        overlay.write_text(
            f"# Trial {trial.number} of sweep {spec.name}: point {trial.user_attrs['point']}, seed {seed}.\n"
            + overlay_yaml(settings),
            encoding="utf-8",
        )
        callback: dict[str, Any] = {
            "result_file": str(result_file),
            "metric": spec.metric,
            "direction": spec.direction,
            "sweep": spec.name,
            "point": int(trial.user_attrs["point"]),
            "seed": seed,
        }
        if spec.pruning and not studies.is_confirmation(trial):  # a confirmation runs to the end, as the point did
            trial_id = studies.trial_id(self.study, self.storage, trial)
            callback.update(storage=spec.storage_url, study_name=spec.name, trial_id=trial_id, **spec.pruning)
        resume = "last" if find_last_checkpoint(folder) is not None else None  # an interrupted attempt: continue it
        args = trial_args("fit", [*spec.configs, overlay], callback, ckpt_path=resume)
        (folder / "command.txt").write_text(shlex.join(["python", "-m", "bertft", *args]) + "\n", encoding="utf-8")
        return trial_process(args)

    def _wait(self, proc: subprocess.Popen[Any], trial: optuna.Trial, start: float) -> str | None:
        """Waits for the trial's process with heartbeats; ``"interrupted"``, a timeout message, or ``None``."""
        beat = time.monotonic()
        timeout = self.spec.trial_timeout
        while True:
            try:
                proc.wait(timeout=1.0)
                return None
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - beat > studies.HEARTBEAT_INTERVAL:
                studies.heartbeat(self.study, self.storage, trial)
                beat = time.monotonic()
            if self.stop.is_set():
                stop_process(proc)
                return "interrupted"
            if timeout and time.monotonic() - start > timeout:
                stop_process(proc)
                return f"timed out after {timeout:g} s (trial_timeout)"

    def _progress(
        self,
        point: int,
        seed: int,
        value: float | None,
        wall: float,
        error: str | None,
        pruned: bool,
        confirming: bool = False,
    ) -> None:
        spec = self.spec
        with self.lock:
            outcome = Outcome(point, seed, value, wall, error, pruned, confirming)
            print(progress_line(self.study, spec, outcome, self.total), flush=True)
            write_report(self.study, spec.output_dir, spec.metric, spec.direction, plot=False, compare=spec.compare)
