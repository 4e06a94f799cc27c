"""What host memory reuse (``bertft.allocator``) buys: two training processes, one with it, stepped alternately.

Both processes build the quickstart's model (``FineTuner``, fused AdamW over bertft's parameter groups) from the same
seed, read the same batches (SST-2, or the long texts of ``train_speed.py`` at 256 tokens), and warm up on every one
of them. Then the parent hands out one optimiser step at a time, alternating which process goes first, so that this
shared host's speed drift hits both alike. It prints the total time, the ratio and the minor page faults per step.

    python benchmarks/allocator.py --data long --steps 8 --repeats 2     # about 5 minutes on 2 CPU cores
    python benchmarks/allocator.py --data sst2 --steps 30 --repeats 2    # about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("default malloc", "reuse_freed_memory()")


def child(mode: str, data: str, steps: int) -> None:
    """One process: build, warm up, then run one step per line read from stdin and answer with its time and faults."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ["BERTFT_MALLOC"] = "system"  # the CLI would turn reuse on: leave the choice to this benchmark
    from bertft.allocator import reuse_freed_memory

    if mode == MODES[1]:
        os.environ.pop("BERTFT_MALLOC")
        assert reuse_freed_memory(), "reuse_freed_memory() did not apply on this system"
    from bertft import tasks
    from bertft.cli import main

    out = tempfile.mkdtemp(prefix="bertft-allocator-")
    argv = ["--config", str(ROOT / "configs" / "quickstart.yaml"), f"--trainer.default_root_dir={out}",
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

    for batch in batches:  # first-seen shapes are slow on CPU, and the optimiser allocates its state
        step(batch)
    print("ready", flush=True)
    for line in sys.stdin:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step(batches[int(line) % steps])
        elapsed = time.perf_counter() - start
        print(json.dumps([elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults]), flush=True)


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["sst2", "long"], default="long")
    p.add_argument("--steps", type=int, default=8, help="distinct batches")
    p.add_argument("--repeats", type=int, default=2, help="passes over them")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    data = "sst2"
    if args.data == "long":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from train_speed import make_long_file

        data = str(Path(tempfile.mkdtemp(prefix="bertft-allocator-")) / "long.tsv")
        make_long_file(Path(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    procs = {}
    for mode in MODES:  # one at a time, so that the set-ups do not overlap
        cmd = [sys.executable, __file__, "--child", mode, data, str(args.steps)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        while (line := proc.stdout.readline()) and line.strip() != "ready":
            pass
        if proc.poll() is not None:
            sys.exit(f"the {mode!r} process failed (exit {proc.returncode})")
        procs[mode] = proc
    times: dict[str, list[float]] = {m: [] for m in MODES}
    faults: dict[str, list[int]] = {m: [] for m in MODES}
    for k in range(args.steps * args.repeats):
        for mode in MODES if k % 2 == 0 else MODES[::-1]:
            procs[mode].stdin.write(f"{k}\n")
            procs[mode].stdin.flush()
            elapsed, n = json.loads(procs[mode].stdout.readline())
            times[mode].append(elapsed)
            faults[mode].append(n)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    base = sum(times[MODES[0]])
    print(f"{args.data}: {args.steps} batches x {args.repeats}, steps alternated between the two processes")
    for mode in MODES:
        per_step = statistics.median(a / b for a, b in zip(times[MODES[0]], times[mode], strict=True))
        print(f"{mode:22s} {sum(times[mode]):7.2f} s  speed {base / sum(times[mode]):.3f}x (per-step median "
              f"{per_step:.3f}x)  minor page faults per step {statistics.mean(faults[mode]):,.0f}")  # fmt: skip


if __name__ == "__main__":
    main_()
