"""How much slower does a fit get with full tracking (W&B offline + every bertft tracking callback)?

Times ``trainer.fit`` of the same short run with ``trainer.logger=false`` and with ``configs/loggers/wandb.yaml``
(offline), alternating, and prints the ratio of the medians. The target is at most 1.05. Needs the CPU to itself:
do not run it while tests run.

    python benchmarks/logging_overhead.py --steps 60 --repeats 3 [--encoder minilm] [--log-every 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bertft.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed_fit(logged: bool, args: argparse.Namespace, root: Path) -> float:
    argv = [
        "--config", str(ROOT / "configs" / "debug.yaml"),
        "--config", str(ROOT / "configs" / "heads" / "weighted.yaml"),
        f"--model.encoder={args.encoder}",
        f"--trainer.max_steps={args.steps}",
        f"--trainer.log_every_n_steps={args.log_every}",
        f"--trainer.val_check_interval={args.steps // 2}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
    ]  # fmt: skip
    argv += ["--config", str(ROOT / "configs" / "loggers" / "wandb.yaml")] if logged else ["--trainer.logger=false"]
    cli = main(argv, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    elapsed = time.perf_counter() - start
    if logged:
        cli.trainer.logger.finish()
    return elapsed


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        timed_fit(False, args, Path(tmp) / "warmup")  # the first fit pays for caches and imports
        for r in range(args.repeats):
            for logged in (False, True):
                times[logged].append(timed_fit(logged, args, Path(tmp) / f"{r}-{logged}"))
    base, logged = statistics.median(times[False]), statistics.median(times[True])
    print(f"no logger: {base:.2f}s  W&B offline + tracking: {logged:.2f}s  ratio: {logged / base:.3f}")


if __name__ == "__main__":
    main_()
