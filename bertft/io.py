"""Atomic file writes, and file sizes as every message writes them.

A reader, or a job killed half-way, never sees a half-written file under its real name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_writer(path: str | os.PathLike[str], binary: bool = False, **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path``; on a clean exit it is flushed, synced and renamed onto ``path``.

    The temporary file lives in the same folder, so ``os.replace`` is a rename within one file system and atomic:
    ``path`` holds either its old complete content or the new one. On an error the temporary file is removed; a
    SIGKILL can leave a hidden ``.<name>.*.tmp`` file behind, never a truncated ``path``.

    Args:
        path: The file to write; its folder is created if missing.
        binary: Open in ``"wb"`` rather than ``"w"`` mode.
        open_kwargs: Passed to ``open`` (``encoding``, ``newline``); text mode defaults to UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if not binary:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        # mkstemp creates the file readable by its owner only; give it the mode a plain open() would (0o666 less the
        # umask), or a report written on one machine of a shared sweep folder is unreadable by the team.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (setting it races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; set it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, binary=True) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, encoding=encoding) as f:
        f.write(text)


def size_text(n: float) -> str:
    """Bytes in decimal units, as ``du -h --si`` and disk makers count: ``1.23 GB``, ``271 MB``, ``12 kB``.

    Every message about disk space (a fit's free-space check, a sweep's progress line and its disk check) uses it, so
    the figures a user compares are in one unit.
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"
