"""What host memory reuse (``bertft.training.allocator``) buys: two training processes, one with it,
stepped alternately.

Both processes build the quickstart's model (``FineTuner``, fused AdamW over bertft's parameter groups) from the same
seed, read the same batches (SST-2, or the long texts of ``train_speed.py`` at 256 tokens), and warm up on every one
of them. Then the parent hands out one optimiser step at a time, alternating which process goes first, so that this
shared host's speed drift hits both alike (``stepped_ab.py``). It prints the total time, the ratio and the minor page
faults per step.

    python benchmarks/allocator.py --data long --steps 8 --repeats 2     # about 5 minutes on 2 CPU cores
    python benchmarks/allocator.py --data sst2 --steps 30 --repeats 2    # about 3 minutes
"""

from __future__ import annotations

import argparse
import os
import sys

from stepped_ab import alternate, child_args, data_file, parse_common, serve

MODES = ["default malloc", "reuse_freed_memory()"]


def child(mode: str, data: str, steps: int) -> None:
    os.environ["BERTFT_MALLOC"] = "system"  # the CLI would turn reuse on: leave the choice to this benchmark
    from bertft.training.allocator import reuse_freed_memory

    if mode == MODES[1]:
        os.environ.pop("BERTFT_MALLOC")
        assert reuse_freed_memory(), "reuse_freed_memory() did not apply on this system"
    serve([], data, steps)


def main_() -> None:
    if spec := child_args(sys.argv[1:]):
        child(*spec)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["sst2", "long"], default="long")
    args = parse_common(p)
    alternate(__file__, MODES, data_file(args.data), args.steps, args.repeats, args.threads)


if __name__ == "__main__":
    main_()
