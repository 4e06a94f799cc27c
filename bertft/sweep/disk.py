"""The disk a sweep uses, and whether there is room for its next trial.

The progress line says how much the sweep folder holds (:func:`used_bytes`). Before a trial starts, :func:`shortage`
compares the free space of the folder's file system with what a trial writes, so that a full disk ends the sweep
with one clear line rather than a trial dying mid-write in ``torch.save``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bertft.io import size_text

#: Checkpoint files a trial holds at its peak: its best, ``last.ckpt``, and the next one being written beside the
#: file it replaces (writes go to a temporary file that is then renamed).
FILES_AT_ONCE = 3
#: What a trial is taken to need before any checkpoint of the sweep exists to measure: three checkpoints of the
#: packaged MiniLM (271 MB each) and change. A larger encoder's first trial is still checked by ``fit`` itself, against
#: its real size (:func:`bertft.training.checks.check_output_folder`).
FLOOR = 10**9


def used_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (``du -sb``); files deleted meanwhile count as 0."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def free_bytes(folder: Path) -> int:
    """The free bytes of the file system that holds ``folder``."""
    return shutil.disk_usage(folder).free


def trial_needs(checkpoint: int | None) -> int:
    """What one trial writes at its peak, from the size of one of the sweep's checkpoints (``None``: none yet)."""
    return checkpoint * FILES_AT_ONCE if checkpoint else FLOOR


def shortage(folder: Path, need: int, at_once: int = 1) -> str | None:
    """Why the next trial cannot start for want of disk, or ``None`` when there is room.

    Args:
        folder: The sweep folder.
        need: What one trial writes at its peak (:func:`trial_needs`).
        at_once: Trials this machine runs at once (each may be at its peak).
    """
    free = free_bytes(folder)
    if free >= need * at_once:
        return None
    many = f" ({at_once} at once: {size_text(need * at_once)})" if at_once > 1 else ""
    return (
        f"not enough disk: {size_text(free)} free under {folder}, a trial needs about {size_text(need)}{many}; "
        "free space or set keep_checkpoints: none"
    )
