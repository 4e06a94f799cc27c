"""Runs real multi-process commands for the DDP tests, and turns a hang into a failure that says where each rank waits.

Every run records each rank's ``torch.distributed`` collectives (``BERTFT_TRACE_COLLECTIVES``) and is held to two
rules: it ends within ``timeout`` seconds, and every rank called the same collectives in the same order. A rank-zero
path that calls one collective too many breaks the second rule even in a run that happens not to hang, and a run
that hangs fails in minutes with each rank's last collective, instead of stalling CI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    collectives: dict[int, list[str]]  # rank -> its collectives in order


def read_collectives(folder: Path) -> dict[int, list[str]]:
    return {
        int(p.stem.removeprefix("rank")): p.read_text(encoding="utf-8").splitlines()
        for p in sorted(folder.glob("rank*.log"))
    }


def last_collectives(folder: Path) -> str:
    traces = read_collectives(folder)
    if not traces:
        return "no rank reached a collective (stuck before the process group formed)"
    return "\n".join(f"rank {r} waits after {len(ops)} collectives, last: {ops[-1] if ops else '-'}" for r, ops in
                     sorted(traces.items()))  # fmt: skip


def assert_same_collectives(traces: dict[int, list[str]], world_size: int) -> None:
    """Every rank called the same collectives, from the same code, in the same order."""
    assert sorted(traces) == list(range(world_size)), f"ranks that reached a collective: {sorted(traces)}"
    first = traces[0]
    for rank, ops in traces.items():
        for i, (a, b) in enumerate(zip(first, ops, strict=False)):
            assert a == b, f"collective #{i} differs:\n  rank 0:    {a}\n  rank {rank}: {b}"
        assert len(ops) == len(first), f"rank 0 called {len(first)} collectives, rank {rank} {len(ops)}"


def launch(
    args: list[str],
    *,
    world_size: int = 2,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    script: Path | None = None,
    command: list[str] | None = None,
    returncode: int = 0,
    while_running: Callable[[subprocess.Popen], None] | None = None,
) -> Run:
    """``python -m bertft <args>`` (or ``python <script> <args>``, or ``command + args``) from the repository root.

    The command runs in a session of its own so that, on a timeout, the ranks Lightning started are killed with it.
    ``while_running`` is called with the process once it started (to send it a signal, say).
    """
    trace = Path(tempfile.mkdtemp(prefix="ddp-trace-"))
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
                "MASTER_PORT": str(free_port()), "BERTFT_TRACE_COLLECTIVES": str(trace), **(env or {})}  # fmt: skip
    full_env.pop("LOCAL_RANK", None)
    if command is None:
        command = [sys.executable, str(script)] if script else [sys.executable, "-m", "bertft"]
    proc = subprocess.Popen([*command, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        if while_running is not None:
            while_running(proc)
        stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"no end after {timeout:.0f} s: `bertft {' '.join(args[:1])}` hangs\n{last_collectives(trace)}\n"
                    f"stderr (end):\n{stderr[-3000:]}")  # fmt: skip
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _reap(proc.pid)
    assert proc.returncode == returncode, f"exit code {proc.returncode}\n{stderr[-4000:]}"
    traces = read_collectives(trace)
    if world_size > 1:
        assert_same_collectives(traces, world_size)
    return Run(proc.returncode, stdout, stderr, traces)


def _reap(pgid: int, grace: float = 20) -> None:
    """No rank may outlive the command: one still running ``grace`` seconds after it ended is killed and reported."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return  # the whole group is gone
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(f"a rank was still running {grace:.0f} s after the command ended (killed now)")
