"""A/B harness: training processes on the same batches, stepped alternately, one optimiser step at a time.

``allocator.py`` and ``recipe.py`` use it to measure one change to a training step at a time (``step_budget.py``
builds its steps with :func:`quickstart_steps`). Every process builds the quickstart's model
(``configs/quickstart.yaml`` plus its own overrides, ``FineTuner.build_optimizer``) from the same seed, reads the
same batches (SST-2, or the long texts of ``train_speed.py`` at 256 tokens) and warms up on each of them (first-seen
shapes are slow on CPU; the optimiser allocates its state). The parent then hands out one step at a time,
alternating which process goes first, so this shared host's speed drift hits all of them alike, and reports each
one's total time, speed against the first and minor page faults per step.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]


def quickstart_steps(
    overrides: list[str], data: str, steps: int
) -> tuple[list[dict], Callable[[dict], None], torch.nn.Module]:
    """``steps`` of the quickstart's batches, a one-step function and the model (the quickstart plus ``overrides``).

    ``data``: ``sst2`` or a path from :func:`data_file`. Each batch has been stepped on once: every shape is seen and
    the optimiser's state exists.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    from bertft import tasks
    from bertft.cli import main

    out = tempfile.mkdtemp(prefix="bertft-ab-")
    argv = ["--config", str(ROOT / "configs" / "quickstart.yaml"), *overrides, f"--trainer.default_root_dir={out}",
            "--data.val_file=null", "--data.test_file=null", "--seed_everything=0"]  # fmt: skip
    if data != "sst2":
        argv += [f"--data.train_file={data}", "--data.max_length=256"]
    cli = main(argv, run=False)
    cli.datamodule.setup("fit")
    loader = iter(cli.datamodule.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    model = cli.model.train()
    optimizer = model.build_optimizer()

    def step(batch: dict) -> None:
        tasks.loss(model.task, model(batch), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches:
        step(batch)
    return batches, step, model


def serve(overrides: list[str], data: str, steps: int) -> None:
    """The child: build, warm up, then run one step per line read from stdin and answer with its time and faults."""
    batches, step, _ = quickstart_steps(overrides, data, steps)
    print("ready", flush=True)
    for line in sys.stdin:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step(batches[int(line) % steps])
        elapsed = time.perf_counter() - start
        print(json.dumps([elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults]), flush=True)


def data_file(kind: str) -> str:
    """``sst2`` (the quickstart's own data), or a path to the long texts that ``train_speed.py`` builds."""
    if kind == "sst2":
        return "sst2"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_speed import make_long_file

    path = Path(tempfile.mkdtemp(prefix="bertft-ab-")) / "long.tsv"
    make_long_file(path)
    return str(path)


def alternate(script: str, modes: list[str], data: str, steps: int, repeats: int, threads: int) -> None:
    """Starts ``python script --child MODE DATA STEPS`` per mode, steps them alternately and prints the comparison."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    procs: dict[str, subprocess.Popen[str]] = {}
    for mode in modes:  # one at a time, so that the set-ups do not overlap
        cmd = [sys.executable, script, "--child", mode, data, str(steps)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        while (line := proc.stdout.readline()) and line.strip() != "ready":
            pass
        if proc.poll() is not None:
            sys.exit(f"the {mode!r} process failed (exit {proc.returncode})")
        procs[mode] = proc
    times: dict[str, list[float]] = {m: [] for m in modes}
    faults: dict[str, list[int]] = {m: [] for m in modes}
    for k in range(steps * repeats):
        for mode in modes[k % len(modes) :] + modes[: k % len(modes)]:  # each mode goes first in turn
            procs[mode].stdin.write(f"{k}\n")
            procs[mode].stdin.flush()
            elapsed, n = json.loads(procs[mode].stdout.readline())
            times[mode].append(elapsed)
            faults[mode].append(n)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    report(times, faults, f"{steps} batches x {repeats}, steps alternated between {len(modes)} processes")


def report(times: dict[str, list[float]], faults: dict[str, list[int]], title: str) -> None:
    first = next(iter(times))
    base = sum(times[first])
    print(title)
    width = max(map(len, times))
    for mode, ts in times.items():
        per_step = statistics.median(a / b for a, b in zip(times[first], ts, strict=True))
        print(f"{mode:{width}s} {sum(ts):7.2f} s  speed {base / sum(ts):.3f}x (per-step median {per_step:.3f}x)  "
              f"minor page faults per step {statistics.mean(faults[mode]):,.0f}")  # fmt: skip


def child_args(argv: list[str]) -> tuple[str, str, int] | None:
    """``(mode, data, steps)`` when this process is a child (``--child MODE DATA STEPS``), else ``None``."""
    if len(argv) == 4 and argv[0] == "--child":
        return argv[1], argv[2], int(argv[3])
    return None


def parse_common(parser: Any) -> Any:
    """Adds the options both benchmarks share and parses the command line."""
    parser.add_argument("--steps", type=int, default=8, help="distinct batches")
    parser.add_argument("--repeats", type=int, default=2, help="passes over them")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return parser.parse_args()
