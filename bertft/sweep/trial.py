"""The trial's side of a sweep: a callback inside the ``fit`` subprocess, and that subprocess's entry point.

:class:`SweepTrial` records the best value of the sweep's metric over the validations (and every ``val/`` metric at
that validation) in ``result.json`` after each validation, so even a killed trial leaves what it reached; with
pruning on, it reports each validation to the Optuna trial and stops the fit when the median pruner says so. Its state
is saved in checkpoints, so a trial resumed from ``last.ckpt`` keeps its best value.

``python -m bertft.sweep.trial fit ...`` is ``python -m bertft fit ...`` that also dies with the sweep process that
started it (Linux ``PR_SET_PDEATHSIG``): a sweep killed with SIGKILL leaves no orphaned trainings behind. The
sweep stops that process with :func:`stop_process` and reads why it failed with :func:`error_line`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from bertft.io import atomic_write_text


class SweepTrial(Callback):
    """Writes a sweep trial's result file and, with pruning on, feeds Optuna's median pruner.

    Args:
        result_file: Where to write the JSON result (``value``, ``metrics``, ``best_model_path``, ``pruned``, ...).
        metric: The validation metric the sweep optimises, e.g. ``val/acc``.
        direction: ``maximize`` or ``minimize``.
        sweep: The sweep's name (a W&B run's group).
        point: The configuration point's number.
        seed: The trial's seed.
        storage: Optuna storage URL, for pruning; ``None`` turns pruning off.
        study_name: The study in ``storage``.
        trial_id: The Optuna trial's id in ``storage``.
        n_startup_trials: The median pruner prunes nothing until this many trials finished.
        n_warmup_steps: ... nor before this training step.
    """

    def __init__(
        self,
        result_file: str,
        metric: str,
        direction: str = "maximize",
        sweep: str = "",
        point: int = 0,
        seed: int = 0,
        storage: str | None = None,
        study_name: str | None = None,
        trial_id: int | None = None,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 0,
    ) -> None:
        self.result_file = result_file
        self.metric = metric
        self.direction = direction
        self.sweep, self.point, self.seed = sweep, point, seed
        self.pruning = (storage, study_name, trial_id, n_startup_trials, n_warmup_steps) if storage else None
        self._trial: Any = None
        self.best: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.pruned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Tags W&B runs with the sweep, point and seed (the group comes from ``WANDB_RUN_GROUP``)."""
        if stage != "fit" or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            try:
                run = logger.experiment
                run.config.update({"sweep": self.sweep, "point": self.point, "seed": self.seed}, allow_val_change=True)
                run.tags = tuple(dict.fromkeys([*(run.tags or ()), f"point-{self.point}", f"seed-{self.seed}"]))
            except Exception as err:  # never fail a training over a dashboard
                rank_zero_warn(f"could not tag the W&B run with the sweep point and seed: {err}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keeps the best value so far, writes the result file, and asks the pruner whether to stop."""
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.direction == "maximize" else value < self.best)
        if math.isfinite(value) and better:
            self.best = value
            self.best_metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1
            }
        self._write(trainer, finished=False)
        if self.pruning is not None and math.isfinite(value) and self._should_prune(value, trainer.global_step):
            self.pruned = True
            trainer.should_stop = True
            rank_zero_warn(f"pruned at step {trainer.global_step}: {self.metric} {value:.4g} is below the median")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Writes the final result, with the best checkpoint's path."""
        self._write(trainer, finished=True)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``--test_best``: writes the test metrics."""
        test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/") and v.numel() == 1}
        if trainer.is_global_zero:
            atomic_write_text(self.result_file, json.dumps({"test": test}, indent=1))

    def state_dict(self) -> dict[str, Any]:
        """The best value so far, kept in checkpoints so a resumed trial does not forget it."""
        return {"best": self.best, "best_metrics": self.best_metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.best = state_dict.get("best")
        self.best_metrics = dict(state_dict.get("best_metrics") or {})

    @rank_zero_only
    def _write(self, trainer: L.Trainer, finished: bool) -> None:
        callback = trainer.checkpoint_callback
        result = {
            "value": self.best,
            "metric": self.metric,
            "metrics": self.best_metrics,
            "step": trainer.global_step,
            "pruned": self.pruned,
            "finished": finished,
            "best_model_path": getattr(callback, "best_model_path", "") or "",
        }
        atomic_write_text(self.result_file, json.dumps(result, indent=1))

    def _should_prune(self, value: float, step: int) -> bool:
        import optuna

        from bertft.sweep.optuna_internals import trial_for

        storage, study_name, trial_id, n_startup_trials, n_warmup_steps = self.pruning  # type: ignore[misc]
        try:
            if self._trial is None:
                optuna.logging.set_verbosity(optuna.logging.WARNING)
                pruner = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
                study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
                self._trial = trial_for(study, trial_id)
            self._trial.report(value, step)
            return bool(self._trial.should_prune())
        except Exception as err:  # e.g. this trial re-run on its own after its sweep ended: train it to the end
            rank_zero_warn(f"pruning is off for this run ({type(err).__name__}: {err})")
            self.pruning = None
            return False


def trial_folder(output_dir: Path, point: int, seed: int, confirmation: bool = False) -> Path:
    """Where a (point, seed) runs: ``<output_dir>/trials/point<P>-seed<S>`` (``confirm-point<P>-...`` for --confirm).

    A ``--confirm`` trial is the same point on a new seed, a run of its own. The one place the name is made: the
    worker that runs a trial and the worker that deletes its checkpoints (:mod:`bertft.sweep.checkpoints`) must agree.
    """
    return Path(output_dir) / "trials" / f"{'confirm-' * confirmation}point{point}-seed{seed}"


def trial_args(
    subcommand: str, configs: Sequence[str | Path], callback: dict[str, Any], ckpt_path: str | None = None
) -> list[str]:
    """A trial's command line after ``python -m bertft``: the search's ``fit``, or ``--test_best``'s ``test``.

    The one place a trial's command is built, so that ``command.txt`` (re-run a trial alone), the search and
    ``--test_best`` cannot drift apart.

    Args:
        subcommand: ``fit`` or ``test``.
        configs: The run's configs, then the trial's overlays, layered in this order.
        callback: :class:`SweepTrial`'s ``init_args``; the callback is appended to the run's own.
        ckpt_path: ``--ckpt_path``: ``last`` to resume an interrupted trial, a checkpoint to test.
    """
    args = [subcommand, *(arg for config in configs for arg in ("--config", str(config)))]
    if ckpt_path is not None:
        args += ["--ckpt_path", ckpt_path]
    args.append("--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.SweepTrial", "init_args": callback}))
    return args


def trial_process(args: Sequence[str]) -> list[str]:
    """The subprocess that runs :func:`trial_args`: ``python -m bertft`` that dies with the sweep."""
    return [sys.executable, "-m", "bertft.sweep.trial", *args]


def _die_with_parent() -> None:
    """Asks Linux to SIGKILL this process when the sweep that started it dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


if __name__ == "__main__":
    _die_with_parent()
    from bertft.training.lightning_cli import main

    main()  # reads sys.argv[1:]: the subcommand (fit, or test for --test_best) and its options


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (the fit saves last.ckpt), then SIGKILL after 30 s, to the trial's whole process group."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def error_line(log: Path, returncode: int) -> str | None:
    """The first line of a failed trial's error, from its log (``bertft: error: ...`` or the exception line)."""
    if returncode == 0:
        return None
    text = log.read_text(encoding="utf-8", errors="replace").split("\n===== trial ")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("bertft: error:")]
    if starts:
        block = lines[starts[-1] :]
        first = block[0].removeprefix("bertft: error:").strip()
        # jsonargparse lists why each type of a union failed; the one that is not "Expected a <class ...>" says why
        reasons = [line[2:] for line in block[1:] if line.startswith("- ") and not line.startswith("- Expected a")]
        return f"{first}: {reasons[0]}" if reasons else first
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return lines[-1] if lines else f"exit status {returncode}"
