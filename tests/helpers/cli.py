"""The command line in tests: its arguments (with the configs' loggers on), and ``python -m bertft`` in a process of
its own under a timeout."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from .data import ROOT


def cli_args(
    out: Path,
    *extra: str,
    command: str | None = "fit",
    configs: Sequence[Path | str] = (),
    encoder: Path | str | None = None,
    train: Path | str | None = None,
    val: Path | str | None = None,
    test: Path | str | None = None,
    predict: Path | str | None = None,
    quoting: bool | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    logger: bool | str = True,
    cache_dir: Path | None = None,
    progress_bar: bool = False,
) -> list[str]:
    """The arguments of a ``bertft`` command, writing to ``out`` with the configs' own logger on.

    Every run gets ``--trainer.default_root_dir=out`` and its token cache in ``cache_dir`` (``out / "cache"`` when
    None); the rest only when given. ``extra`` comes last, so it overrides.

    Args:
        out: The run's output folder.
        extra: More arguments, as the command line takes them.
        command: ``fit``, ``validate``, ``test``, ``predict``; None for none (``main(..., run=False)``).
        configs: ``--config`` files, in order, before every other option.
        encoder: ``--model.encoder``.
        train: ``--data.train_file`` (likewise ``val``, ``test``, ``predict``).
        val: ``--data.val_file``.
        test: ``--data.test_file``.
        predict: ``--data.predict_file``.
        quoting: ``--data.quoting`` (False for SST-2's bare double quotes).
        batch_size: ``--data.batch_size``.
        max_steps: ``--trainer.max_steps``.
        logger: True leaves the logger the configs choose (Lightning's default without one); False turns it off
            (for tests whose point is something else); a class path picks that logger.
        cache_dir: ``--data.cache_dir``.
        progress_bar: False turns the bar (and the progress lines it prints in logs) off; True leaves it as shipped.
    """
    args = [command] if command else []
    args += [f"--config={config}" for config in configs]
    options = {
        "model.encoder": encoder,
        "data.train_file": train,
        "data.val_file": val,
        "data.test_file": test,
        "data.predict_file": predict,
        "data.quoting": None if quoting is None else str(quoting).lower(),
        "data.batch_size": batch_size,
        "data.cache_dir": cache_dir or out / "cache",
        "trainer.max_steps": max_steps,
        "trainer.logger": None if logger is True else logger if isinstance(logger, str) else "false",
        "trainer.enable_progress_bar": None if progress_bar else "false",
        "trainer.default_root_dir": out,
    }
    args += [f"--{key}={value}" for key, value in options.items() if value is not None]
    return [*args, *extra]


def run_bertft(
    *args: str,
    timeout: float = 300,
    command: Sequence[str] | None = None,
    env: dict[str, str | None] | None = None,
    cwd: Path = ROOT,
    returncode: int | None = 0,
    while_running: Callable[[subprocess.Popen], None] | None = None,
    on_timeout: Callable[[], str] | None = None,
) -> subprocess.CompletedProcess:
    """Runs ``python -m bertft <args>`` (or ``command + args``) in a process of its own and returns its output.

    Offline (no hub, W&B offline). The process starts a session of its own, so that on a timeout everything it
    started (Lightning's other ranks, a sweep's trials) is killed with it, and the test fails at once with the end
    of the command's stderr instead of stalling the run. A process of that session still running 20 s after the
    command ended fails the test as well.

    Args:
        args: The command's arguments.
        timeout: Seconds the command may take, ``while_running`` included.
        command: What to run instead of ``python -m bertft`` (``[sys.executable, "-c", script]``, ``torchrun``...).
        env: Environment variables to set (None: to remove) on top of this process's.
        cwd: Where it runs: the repository root, as the README's commands.
        returncode: The exit code the command must end with; None for any.
        while_running: Called with the process once it started (to send it a signal, say); its output is read
            meanwhile, so a chatty command never blocks on a full pipe.
        on_timeout: Returns more to say when the command hangs (where each rank waits, say).
    """
    argv = [*(command or [sys.executable, "-m", "bertft"]), *args]
    shown = " ".join(["bertft" if command is None else " ".join(map(str, command))[:80], *map(str, args[:1])])
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.Popen(
        argv, cwd=cwd, env={k: v for k, v in full_env.items() if v is not None}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    output: dict[str, str] = {}

    def read() -> None:
        output["stdout"], output["stderr"] = proc.communicate()

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        if while_running is not None:
            while_running(proc)
        reader.join(max(deadline - time.monotonic(), 0))
        if reader.is_alive():
            os.killpg(proc.pid, signal.SIGKILL)
            reader.join()
            more = f"\n{on_timeout()}" if on_timeout else ""
            tail = output["stderr"][-3000:]
            pytest.fail(f"`{shown}` did not end within {timeout:.0f} s{more}\nstderr (end):\n{tail}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join()
    _reap(proc.pid, shown)
    if returncode is not None:
        assert proc.returncode == returncode, (
            f"`{shown}` exit code {proc.returncode}, not {returncode}\nstderr (end):\n{output['stderr'][-4000:]}"
        )
    return subprocess.CompletedProcess(argv, proc.returncode, output["stdout"], output["stderr"])


def _reap(session: int, shown: str, grace: float = 20) -> None:
    """No process of the command's session may outlive it: one still running after ``grace`` s is killed, and fails."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(session, 0)
        except (ProcessLookupError, PermissionError):
            return  # the whole group is gone
        time.sleep(0.2)
    os.killpg(session, signal.SIGKILL)
    pytest.fail(f"a process that `{shown}` started was still running {grace:.0f} s after it ended (killed now)")


def resume_fit_args(out: Path, train: str | Path, val: str | Path, *extra: str) -> list[str]:
    """The kill -9 and resume tests' fit: two epochs of the real MiniLM, last.ckpt every 2 steps, the CSV logger on;
    dropout on (0.1), so the RNG states must be restored for equal masks."""
    return cli_args(
        out,
        "--data.max_length=32",
        "--trainer.max_epochs=2",
        "--trainer.deterministic=true",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32",
        "--trainer.log_every_n_steps=1",
        "--tracking.misclassified=0",
        "--seed_everything=7",
        "--resume.every_n_steps=2",
        *extra,
        encoder="minilm",
        train=train,
        val=val,
        quoting=False,
        batch_size=5,
        logger="bertft.training.loggers.CSVLogger",
        cache_dir=out.parent / "cache",
    )


def last_lr(metrics: Path) -> tuple[int, float]:
    """The last logged step of a run's ``metrics.csv`` and the encoder's learning rate there (the head's in a linear
    probe, whose encoder has no optimiser group)."""
    rows = list(csv.DictReader(metrics.open()))
    group = "lr/encoder" if "lr/encoder" in rows[0] else "lr/head"
    rows = [r for r in rows if r.get(group)]
    return int(rows[-1]["step"]), float(rows[-1][group])


def kill_once_written(path: Path, timeout: float = 300) -> Callable[[subprocess.Popen], None]:
    """A ``run_bertft(while_running=...)`` callback: SIGKILL the run as soon as ``path`` exists (or it ends)."""

    def kill(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)

    return kill
