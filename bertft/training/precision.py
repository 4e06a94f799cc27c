"""The default numeric precision: bf16 where the hardware runs it faster, fp32 everywhere else.

Measured for MiniLM training (``benchmarks/precision.py``): bf16 autocast runs at 0.24 to 0.67x the speed of fp32 on
a CPU without AMX matrix units (its bf16 matmuls are emulated), while GPUs from Ampere on and CPUs with AMX run bf16
matmuls several times faster than fp32. The choice is made from the hardware's capabilities, not by timing at
start-up, so that every process of a multi-process run picks the same precision.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

BF16, FP32 = "bf16-mixed", "32-true"


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles with bf16 support (Intel Sapphire Rapids and newer).

    ``BERTFT_CPU_BF16=0`` in the environment answers no, so an unset ``precision`` stays fp32 on such a CPU: the
    test suite sets it, as its exact comparisons (DDP against one process, predict against a forward pass) assume fp32
    on every CPU; subprocesses inherit it.
    """
    if os.environ.get("BERTFT_CPU_BF16") == "0":
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, but what oneDNN itself consults
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "amx_bf16" in cpuinfo.read_text(errors="replace")


@cache
def default_precision(accelerator: str = "auto") -> str:
    """Returns Lightning's ``precision`` string that trains fastest here without changing the result's quality.

    Args:
        accelerator: The Trainer's accelerator: ``auto`` (a GPU when one is visible), ``gpu``/``cuda`` or ``cpu``.

    Returns:
        ``"bf16-mixed"`` on a CUDA GPU that supports bf16 or a CPU with AMX, ``"32-true"`` otherwise.
    """
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return BF16 if torch.cuda.is_bf16_supported() else FP32
    return BF16 if cpu_has_amx_bf16() else FP32
