"""Draws docs/dashboard.png from a run's own logged metrics (the CSV logger's ``metrics.csv``).

The picture in the Dashboards guide (docs/guides/dashboards.md) came from this short real run (MiniLM, weighted-layer
head, SST-2; ``mix_lr`` raised from 1e-3 so the layer weights move visibly within 150 steps):

    python -m bertft fit --config configs/quickstart.yaml --config configs/heads/weighted.yaml \
        --config configs/loggers/csv.yaml --trainer.max_steps=150 --trainer.val_check_interval=25 \
        --trainer.limit_val_batches=8 --trainer.limit_test_batches=4 --trainer.log_every_n_steps=5 \
        --data.max_length=64 --data.batch_size=16 --model.mix_lr=0.05 --trainer.default_root_dir=outputs/dashboard
    python docs/plot_dashboard.py outputs/dashboard/csv/version_0/metrics.csv docs/dashboard.png

Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def read_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a Lightning ``metrics.csv`` as ``(step, value)`` pairs."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, value in row.items():
                if value and key not in ("step", "epoch"):
                    series[key].append((step, float(value)))
    return series


def plot(series: dict[str, list[tuple[int, float]]], out: Path, title: str = "") -> None:
    """Four panels: learning curve, validation accuracy, layer weights, learning rates."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))

    ax = axes[0, 0]
    for key, style in (("train/loss", "-"), ("val/loss", "o-")):
        if series.get(key):
            ax.plot(*zip(*series[key], strict=True), style, label=key, markersize=4)
    ax.set(title="Learning curve", xlabel="step", ylabel="loss")
    ax.legend()

    ax = axes[0, 1]
    for key in ("val/acc", "val/f1"):
        if series.get(key):
            ax.plot(*zip(*series[key], strict=True), "o-", label=key, markersize=4)
    ax.set(title="Validation", xlabel="step")
    ax.legend()

    ax = axes[1, 0]
    layers = sorted((k for k in series if k.startswith("layers/weight_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    for key in layers:
        i = int(key.rsplit("_", 1)[1])
        ax.plot(*zip(*series[key], strict=True), label="embeddings" if i == 0 else f"layer {i}")
    ax.set(title="Weighted-layer head: weight of each layer (softmax)", xlabel="step", ylabel="weight")
    ax.legend(fontsize=8, ncol=2, loc="center right")

    ax = axes[1, 1]
    for key in sorted(k for k in series if k.startswith("lr/") and not k.endswith(".no_decay")):
        ax.plot(*zip(*series[key], strict=True), label=key)
    if "lr/mix.no_decay" in series:
        ax.plot(*zip(*series["lr/mix.no_decay"], strict=True), label="lr/mix")
    ax.set(title="Learning rate per parameter group", xlabel="step", yscale="log")
    ax.legend(fontsize=8)

    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    """Command line: ``python docs/plot_dashboard.py METRICS_CSV OUT_PNG``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_csv", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).with_name("dashboard.png"))
    parser.add_argument("--title", default="MiniLM + weighted-layer head on SST-2: a 150-step run's own logged metrics")
    args = parser.parse_args()
    plot(read_series(args.metrics_csv), args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
