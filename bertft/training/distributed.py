"""What multi-device training needs beyond Lightning's own engine.

FSDP's wrapping policy, a clean exit, and what finds the cause of a stuck run: a per-rank record of every collective
(:func:`trace_collectives`) and stack dumps on demand (:func:`dump_stacks_on_sigusr2`).
"""

from __future__ import annotations

import faulthandler
import functools
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

#: Set to a folder to make every process append each ``torch.distributed`` collective it calls to
#: ``<folder>/rank<N>.log`` (see :func:`trace_collectives`).
TRACE_ENV = "BERTFT_TRACE_COLLECTIVES"

# The module-level collectives that Lightning, torchmetrics and bertft call. DDP's gradient all-reduce runs in C++
# (the reducer) and is the same on every rank by construction, so it is not recorded.
_COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "monitored_barrier",
    "reduce",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
)
_depth = threading.local()


def wrap_encoder_layers(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: one FSDP unit per transformer layer of the encoder, whatever its class.

    :class:`~bertft.FineTuner` tags the encoder's layers (BERT's ``BertLayer``, DistilBERT's ``TransformerBlock``,
    ...) when it loads them, so one policy serves every BERT-family encoder. Use it from YAML as
    ``auto_wrap_policy: bertft.training.distributed.wrap_encoder_layers``. An encoder whose layers share one set of
    weights (ALBERT) gets no per-layer units: its shared layer stays in the root unit, gathered once per step rather
    than once for each of the layers that run it.

    Args:
        module: The module FSDP considers.
        recurse: Whether FSDP asks if it should descend into ``module`` (always yes).
        nonwrapped_numel: Parameters not yet wrapped under ``module`` (unused: layers are the unit, not a size).
    """
    if recurse:
        return True
    return bool(getattr(module, "bertft_encoder_layer", False))


def destroy_process_group() -> None:
    """Tears the process group down at the end of a run.

    Under ``torchrun`` a process that exits with the group alive aborts with "terminate called without an active
    exception" after training finished; Lightning's own launcher cleans up, torchrun's does not.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def dump_stacks_on_sigusr2() -> None:
    """``kill -USR2 <pid>`` prints every thread's Python stack of that process to its stderr, and it goes on running.

    A DDP run that seems stuck is almost always one rank waiting in a collective that another rank never reaches;
    the stack of each rank shows which. Not SIGUSR1: Lightning uses it to requeue SLURM jobs.
    """
    if not hasattr(signal, "SIGUSR2") or threading.current_thread() is not threading.main_thread():
        return
    for stream in (sys.stderr, sys.__stderr__):  # captured (pytest, notebooks): the process's own stderr
        try:
            faulthandler.register(signal.SIGUSR2, file=stream, all_threads=True, chain=False)
            return
        except (AttributeError, ValueError, OSError):  # no file descriptor behind it (io.UnsupportedOperation)
            continue


def trace_collectives(folder: str | os.PathLike[str]) -> None:
    """Records each ``torch.distributed`` collective this process calls, in order, to ``<folder>/rank<N>.log``.

    Every rank must call the same collectives in the same order; one that calls an extra one (typically inside a
    ``rank_zero_only`` path) pairs it with another rank's next collective, and the run hangs. Compare the files of
    the ranks: the first line where they differ names the collective and the code that called it. A line is
    ``<collective> <file>:<line> <function> < <its caller> < ...``, innermost first, from the first frame outside
    ``torch.distributed``; each line is flushed before the collective runs, so the last line of a stuck rank is
    where it waits.

    Args:
        folder: Where the per-rank files go (created if needed). The CLI calls this when ``BERTFT_TRACE_COLLECTIVES``
            is set, in every process, the ranks Lightning starts included (they inherit the variable).
    """
    if getattr(dist, "_bertft_traced", False) or not dist.is_available():
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name in _COLLECTIVES:
        original = getattr(dist, name, None)
        if original is not None:
            setattr(dist, name, _traced(original, name, Path(folder)))
    dist._bertft_traced = True  # type: ignore[attr-defined]


def _traced(original: Any, name: str, folder: Path) -> Any:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        outer = getattr(_depth, "value", 0) == 0  # broadcast_object_list calls broadcast: record the outer one only
        if outer and dist.is_initialized():
            rank = dist.get_rank()
            with open(folder / f"rank{rank}.log", "a", encoding="utf-8") as f:
                f.write(f"{name} {_caller()}\n")
        _depth.value = getattr(_depth, "value", 0) + 1
        try:
            return original(*args, **kwargs)
        finally:
            _depth.value -= 1

    return call


def _caller(depth: int = 3) -> str:
    """The ``depth`` innermost frames outside ``torch.distributed``: Lightning's wrapper and who called it."""
    here = os.path.abspath(__file__)
    frames = []
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if path != here and f"torch{os.sep}distributed" not in path and "functools" not in path:
            frames.append(f"{_short(path)}:{frame.lineno} {frame.name}")
            if len(frames) == depth:
                break
    return " < ".join(frames) or "?"


def _short(path: str) -> str:
    """``lightning/pytorch/...`` or ``bertft/...`` rather than a site-packages path that differs between machines."""
    for root in sorted(sys.path, key=len, reverse=True):
        if root and path.startswith(os.path.abspath(root) + os.sep):
            return os.path.relpath(path, os.path.abspath(root))
    return path
