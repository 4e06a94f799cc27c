"""bertft's framework overhead: ``Trainer.fit`` as the CLI builds it against a bare PyTorch loop, same work.

``train_speed.py`` runs every variant in its own process, one after the other; on a shared host whose speed drifts
(its fp32 matmul peak was measured at 79 and 113 GFLOP/s a few minutes apart), that cannot resolve differences of a
few percent. This benchmark removes everything but the framework: one process, one model (``FineTuner`` from
``configs/quickstart.yaml``), the same pre-collated batches in the same order, the same fused AdamW parameter groups,
and the two loops alternated in short segments so drift hits both alike. The Lightning side keeps everything a user
gets from the quickstart: the progress bar, the CSV logger, the tracking, learning-rate, checkpoint, resume and
non-finite-loss callbacks.

    python benchmarks/overhead.py                 # about 4 minutes on 2 CPU cores
    python benchmarks/overhead.py --steps 20 --rounds 2
    python benchmarks/overhead.py -- --trainer.enable_progress_bar=false     # what one part of it costs
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from bertft import tasks  # noqa: E402
from bertft.cli import main as cli_main  # noqa: E402


class Batches:
    """A fixed list of batches that Lightning treats as one loader (a bare list would be read as several)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepEnds(Callback):
    """Wall-clock time at the start of training and at the end of every step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_start(self, *args: Any) -> None:  # noqa: D102
        self.ends.append(time.perf_counter())

    def on_train_batch_end(self, *args: Any) -> None:  # noqa: D102
        self.ends.append(time.perf_counter())


def bare_loop(model: Any, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """The same steps written by hand: forward, loss, backward, fused AdamW over bertft's groups, schedule, zero."""
    optimizer = model.build_optimizer()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / len(batches))
    model.train()
    ends = [time.perf_counter()]
    for batch in batches:
        loss = tasks.loss(model.task, model(batch), batch["labels"])
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimiser steps per segment")
    p.add_argument("--rounds", type=int, default=3, help="segments of each loop, alternated")
    p.add_argument("--skip", type=int, default=2, help="untimed first steps of each segment (optimiser state)")
    p.add_argument("cli_args", nargs="*", help="extra bertft options, after --")
    args = p.parse_args()
    out = tempfile.mkdtemp(prefix="bertft-overhead-")

    def make_cli() -> Any:  # a fresh Trainer (and model, seeded alike) per segment, as a user's `fit` gets
        return cli_main(
            ["--config", "configs/quickstart.yaml", f"--trainer.max_steps={args.steps}",
             f"--trainer.default_root_dir={out}", "--data.val_file=null", "--data.test_file=null", *args.cli_args],
            run=False,
        )  # fmt: skip

    cli = make_cli()
    data = cli.datamodule
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]
    start = copy.deepcopy(cli.model)
    warm = copy.deepcopy(start).train()
    for batch in batches:  # first-seen shapes are slow on CPU: warm every one up before timing
        tasks.loss(warm.task, warm(batch), batch["labels"]).backward()
    del warm

    def lightning() -> list[float]:
        fresh = make_cli()
        clock = StepEnds()
        fresh.trainer.callbacks.append(clock)
        fresh.trainer.fit(fresh.model, train_dataloaders=Batches(batches))
        return [b - a for a, b in zip(clock.ends[:-1], clock.ends[1:], strict=True)]

    times: dict[str, list[float]] = {"bertft (Lightning)": [], "bare loop": []}
    ratios = []
    for r in range(args.rounds):
        order = ["bertft (Lightning)", "bare loop"] if r % 2 == 0 else ["bare loop", "bertft (Lightning)"]
        seg = {}
        for name in order:
            steps = lightning() if name.startswith("bertft") else bare_loop(copy.deepcopy(start), batches)
            seg[name] = sum(steps[args.skip :])
            times[name].append(seg[name])
        ratios.append(seg["bare loop"] / seg["bertft (Lightning)"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seg.items()) + f"; speed {ratios[-1]:.3f}x")
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.skip :])
    print(f"\n{args.steps - args.skip} timed steps x {args.rounds} rounds, {tokens} real tokens per segment")
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s ({tokens / statistics.median(ts):.0f} real tokens/s)")
    print(f"bertft speed / bare loop: median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
