"""``bertft serve`` in tests: a tiny exported model, and the server in a process (session) of its own on a free
loopback port, waited for and stopped under timeouts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .data import ROOT


def export_untrained(encoder: Path | str, out: Path, task: str, labels: Sequence[str], head=None, **export_kwargs):
    """Exports a model with its head as initialised (no training): a folder ``bertft serve`` reads, in seconds."""
    from bertft import FineTuner, MeanHead, TokenHead
    from bertft.deploy.export import export

    from .training import quiet_trainer

    head = head or (TokenHead() if task == "token" else MeanHead())
    model = FineTuner(str(encoder), head=head, task=task, num_labels=max(len(labels), 1), label_names=list(labels))
    trainer = quiet_trainer(max_steps=0)
    trainer.strategy.connect(model)  # a checkpoint of the model as it is, as `bertft fit` writes them
    ckpt = out.parent / f"{out.name}.ckpt"
    trainer.save_checkpoint(ckpt)
    return export(ckpt, out, **export_kwargs)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port``: connecting is refused, and a new server can bind and listen on it.

    SO_REUSEADDR, as servers (uvicorn) set it: connections the old server closed linger in TIME_WAIT for a minute,
    which only a bind without it would trip on.
    """
    with socket.socket() as probe:
        probe.settimeout(2)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def session_pids(session: int) -> list[int]:
    """The processes of a session (the server and every process it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[3]) == session and fields[0] != "Z":  # sid, and not a zombie
                    pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A running ``bertft serve``."""

    proc: subprocess.Popen
    port: int
    output: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then waits for the process; returns its exit code (SIGKILL to the session if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            pytest.fail(f"bertft serve did not stop within {timeout:.0f} s of SIGTERM")


@contextlib.contextmanager
def serving(
    folder: Path | str, *options: str, env: dict[str, str] | None = None, startup: float = 120
) -> Iterator[Server]:
    """Runs ``python -m bertft serve folder options`` until the block ends; yields once ``/health`` answers 200.

    The server runs in a session of its own; at the end it gets SIGTERM, and whatever of its session is still
    running 30 s later is killed (the test that stops it itself checks it stopped cleanly).
    """
    port = free_port()
    argv = [sys.executable, "-m", "bertft", "serve", str(folder), "--port", str(port), *options]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})}
    logs = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in finally; a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=logs, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    server = Server(proc, port)

    def log() -> str:
        logs.seek(0)
        text = logs.read()
        server.output["log"] = text
        return text

    try:
        deadline = time.monotonic() + startup
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bertft serve exited with {proc.returncode} before it was ready:\n{log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"bertft serve was not ready within {startup:.0f} s:\n{log()[-4000:]}")
            time.sleep(0.3)
        log()
        yield server
    finally:
        if proc.poll() is None:
            server.stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its session left behind
        log()
        logs.close()


def hammer(url: str, body: dict, stop: threading.Event, statuses: list[int], headers: dict | None = None) -> None:
    """POSTs ``body`` to ``url`` in a loop until ``stop``, recording each status (0: no answer, connection closed)."""
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            try:
                statuses.append(client.post(url, json=body, headers=headers).status_code)
            except httpx.HTTPError:
                statuses.append(0)
                time.sleep(0.05)
