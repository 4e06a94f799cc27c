"""What the opt-in fast recipe costs in accuracy: the quickstart with and without ``configs/speed/fast.yaml``, per seed.

For every seed, runs ``python -m bertft fit --config configs/quickstart.yaml --seed_everything=S`` and the same with
``--config configs/speed/fast.yaml`` layered on, one after the other (each a full quickstart: 900 steps, validation,
then the best checkpoint on the test set), and reads ``val/acc``, ``test/acc`` and the wall time from each run. Prints
a markdown table per seed, then the mean and standard deviation of each and of the paired difference (fast minus
shipped, same seed), so a difference can be compared with what another seed moves.

    python benchmarks/recipe_accuracy.py --seeds 1 2 3        # about 40 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"quickstart.yaml": [], "+ speed/fast.yaml": ["--config", "configs/speed/fast.yaml"]}


def last_values(metrics: Path) -> dict[str, float]:
    """The last logged value of every column of a Lightning ``metrics.csv``."""
    values: dict[str, float] = {}
    with metrics.open(newline="") as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


def run(arm: list[str], seed: int) -> dict[str, float]:
    """One quickstart fit; its final ``val/acc``, ``test/acc`` and wall time in seconds."""
    out = tempfile.mkdtemp(prefix="bertft-recipe-acc-")
    cmd = [sys.executable, "-m", "bertft", "fit", "--config", "configs/quickstart.yaml", *arm,
           f"--seed_everything={seed}", f"--trainer.default_root_dir={out}",
           "--trainer.enable_progress_bar=false"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    (metrics,) = Path(out).glob("**/metrics.csv")
    values = last_values(metrics)
    return {"val": values["val/acc"], "test": values["test/acc"], "s": seconds}


def spread(xs: list[float], digits: int = 4) -> str:
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    print("| seed | config | `val/acc` (6,735) | `test/acc` (872) | wall time |\n| --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        for name, arm in ARMS.items():
            r = run(arm, seed)
            results[name].append(r)
            print(f"| {seed} | {name} | {r['val']:.4f} | {r['test']:.4f} | {r['s'] / 60:.1f} min |", flush=True)
    shipped, fast = results.values()
    print("\n| config | `val/acc` mean ± sd | `test/acc` mean ± sd | wall time, mean |\n| --- | --- | --- | --- |")
    for name, rs in results.items():
        print(f"| {name} | {spread([r['val'] for r in rs])} | {spread([r['test'] for r in rs])} | "
              f"{statistics.mean(r['s'] for r in rs) / 60:.1f} min |")  # fmt: skip
    diff = {k: [f[k] - s[k] for s, f in zip(shipped, fast, strict=True)] for k in ("val", "test")}
    speed = statistics.mean(s["s"] / f["s"] for s, f in zip(shipped, fast, strict=True))
    print(f"| fast minus shipped, same seed | {spread(diff['val'])} | {spread(diff['test'])} | "
          f"{speed:.2f}x the speed (whole run) |")  # fmt: skip


if __name__ == "__main__":
    main()
