"""Runs real multi-process commands for the DDP tests, and turns a hang into a failure that says where each rank waits.

Every run records each rank's ``torch.distributed`` collectives (``BERTFT_TRACE_COLLECTIVES``) and is held to two
rules: it ends within ``timeout`` seconds, and every rank called the same collectives in the same order. A rank-zero
path that calls one collective too many breaks the second rule even in a run that happens not to hang, and a run
that hangs fails in minutes with each rank's last collective, instead of stalling CI.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .helpers import run_bertft

WORKER = Path(__file__).with_name("ddp_worker.py")


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

    Runs through :func:`tests.helpers.run_bertft`: in a session of its own, so that on a timeout the ranks Lightning
    started are killed with it, and no rank may outlive the command. ``while_running`` is called with the process
    once it started (to send it a signal, say).
    """
    trace = Path(tempfile.mkdtemp(prefix="ddp-trace-"))
    ranks = {"OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), "BERTFT_TRACE_COLLECTIVES": str(trace),
             "LOCAL_RANK": None}  # fmt: skip
    result = run_bertft(
        *args,
        timeout=timeout,
        command=command or ([sys.executable, str(script)] if script else None),
        env={**ranks, **(env or {})},
        returncode=returncode,
        while_running=while_running,
        on_timeout=lambda: last_collectives(trace),
    )
    traces = read_collectives(trace)
    if world_size > 1:
        assert_same_collectives(traces, world_size)
    return Run(result.returncode, result.stdout, result.stderr, traces)


def run_worker(args: list[str], devices: int = 2, timeout: int = 600) -> list[dict]:
    """The CLI through ``ddp_worker.py``, held to :func:`launch`'s rules (no hang, the same collectives on every
    rank); what each rank reported (its rank, weights' digest and metrics), in rank order."""
    folder = Path(tempfile.mkdtemp(prefix="ddp-results-"))
    launch(args, world_size=devices, timeout=timeout, env={"BERTFT_RESULT_DIR": str(folder)}, script=WORKER)
    return worker_results(folder)


def worker_results(folder: Path) -> list[dict]:
    """What each rank of ``ddp_worker.py`` wrote to ``folder``, in rank order."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
