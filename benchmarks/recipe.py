"""What each opt-in recipe change buys in speed: training processes with and without it, stepped alternately.

The knobs of ``configs/speed/fast.yaml`` change the training recipe, so they are opt-in (their accuracy effect is in
BENCHMARKS.md). This measures their speed one at a time and together, against the quickstart as shipped: every
process builds the quickstart's model with its own overrides, reads the same batches, warms up on each, and the
parent hands out one optimiser step at a time, each process going first in turn (``stepped_ab.py``).

    python benchmarks/recipe.py --steps 40 --repeats 2             # SST-2, about 8 minutes on 2 CPU cores
    python benchmarks/recipe.py --data long --steps 6 --repeats 1  # 256-token texts, about 8 minutes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stepped_ab import alternate, child_args, data_file, parse_common, serve

FAST = str(Path(__file__).resolve().parents[1] / "configs" / "speed" / "fast.yaml")
MODES = {
    "quickstart.yaml": [],
    "+ encoder_dropout=0": ["--model.encoder_dropout=0.0"],
    "+ freeze_embeddings": ["--model.freeze_embeddings=true"],
    "+ speed/fast.yaml (both)": ["--config", FAST],
}


def main_() -> None:
    if spec := child_args(sys.argv[1:]):
        mode, data, steps = spec
        serve(MODES[mode], data, steps)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["sst2", "long"], default="sst2")
    args = parse_common(p)
    alternate(__file__, list(MODES), data_file(args.data), args.steps, args.repeats, args.threads)


if __name__ == "__main__":
    main_()
