"""A throwaway PostgreSQL server for tests: ``initdb`` into a temporary folder, started on a free loopback port.

Debian's ``postgresql`` package puts its programs in ``/usr/lib/postgresql/<version>/bin`` (not on ``PATH``); any
``initdb`` on ``PATH`` is taken first. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (which the package creates), in a folder that user owns.

Without the programs, a test that needs the server is skipped with what to install, unless
``BERTFT_REQUIRE_POSTGRES=1`` (set by ``.ci/run``, which installs the package): then it fails, so that CI never passes
by skipping the one test that runs a sweep on a real database server.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE = "BERTFT_REQUIRE_POSTGRES"
INSTALL = "apt-get install postgresql (Debian, Ubuntu) or your system's PostgreSQL server package"
TIMEOUT = 30  # seconds for the server to start (pg_ctl -t) and for each command around it


@dataclass
class PostgresServer:
    """A running server: ``url(database)`` opens one of its databases; ``create_database`` makes a new one."""

    bin_dir: Path
    port: int
    user: str = "bertft"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database``, with psycopg 3 as the driver (``bertft[postgres]``) and no password:
        libpq reads it from ``PGPASSWORD`` (set while the server runs), as the sweeps guide recommends."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Creates the database ``name`` and returns its URL."""
        createdb = [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name]
        subprocess.run(createdb, check=True, timeout=TIMEOUT, capture_output=True)
        return self.url(name)


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on ``PATH``, else the newest Debian one; None when neither exists."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3].split(".")[0]))
    return Path(found[-1]).parent if found else None


def server_or_skip() -> Path:
    """``find_bin_dir()``, or skip the test (fail it under ``BERTFT_REQUIRE_POSTGRES=1``) saying what to install."""
    bin_dir = find_bin_dir()
    if bin_dir is not None:
        return bin_dir
    message = f"no PostgreSQL server programs (initdb, pg_ctl) on PATH or in /usr/lib/postgresql: {INSTALL}"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{message} ({REQUIRE}=1: this test must run here)")
    pytest.skip(message)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Starts a PostgreSQL server for the block, then stops it (``-m immediate``) and deletes its folder.

    The server listens on 127.0.0.1 only, on a port that was free, and checks the password of its user ``bertft``
    (``scram-sha-256``), as a shared server would. The password is a fresh random one, in ``PGPASSWORD`` while the
    server runs, never in a URL: every client (the tests, the sweeps they start, ``createdb``) reads it from there.
    Durability is off (``fsync``), since the data is thrown away.
    """
    bin_dir = server_or_skip()
    folder = Path(tempfile.mkdtemp(prefix="bertft-pg-"))  # in /tmp: the postgres user cannot enter pytest's 0700 tmp
    data, log = folder / "data", folder / "server.log"
    as_server = _server_user(folder)
    port = _free_port()
    started = False
    password = secrets.token_hex(16)
    pwfile = folder / "password"
    pwfile.write_text(password + "\n", encoding="utf-8")
    if as_server:
        shutil.chown(pwfile, "postgres")
    before = os.environ.get("PGPASSWORD")
    try:
        _run([*as_server, str(bin_dir / "initdb"), "-D", str(data), "-U", "bertft", "-A", "scram-sha-256",
              f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions"])  # fmt: skip
        pwfile.unlink()
        os.environ["PGPASSWORD"] = password
        options = f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        started = True  # from here on, stop whatever pg_ctl may have started
        _run([*as_server, str(bin_dir / "pg_ctl"), "start", "-w", "-t", str(TIMEOUT), "-D", str(data), "-l", str(log),
              "-o", options], log=log)  # fmt: skip
        yield PostgresServer(bin_dir, port)
    finally:
        if started:
            _stop(as_server, bin_dir, data)
        if before is None:
            os.environ.pop("PGPASSWORD", None)
        else:
            os.environ["PGPASSWORD"] = before
        shutil.rmtree(folder, ignore_errors=True)


def _server_user(folder: Path) -> list[str]:
    """The command prefix that runs the server's programs: none, or ``runuser -u postgres --`` as root."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"as root, PostgreSQL must run as another user, and there is no user 'postgres': {INSTALL}")
    os.chown(folder, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], log: Path | None = None) -> None:
    """Runs a server command under a timeout; fails the test with its output (and the server's log) if it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command[-8:])}` did not end within {TIMEOUT + 30} s{_tail(log)}")
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    return "\nserver log (end):\n" + log.read_text(errors="replace")[-3000:]


def _stop(as_server: list[str], bin_dir: Path, data: Path) -> None:
    """``pg_ctl stop -m immediate`` under a timeout; if that fails, SIGKILL the postmaster from its pid file."""
    try:
        stop = [*as_server, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-t", str(TIMEOUT)]
        if subprocess.run(stop, capture_output=True, timeout=TIMEOUT + 10).returncode == 0:
            return
    except subprocess.TimeoutExpired:
        pass
    pid_file = data / "postmaster.pid"
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            time.sleep(0.5)
        except (ProcessLookupError, ValueError):
            pass
