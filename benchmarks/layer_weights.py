"""What a weighted-layer head learned in each trial of a sweep: its softmax layer weights and scale, per searched value.

Reads each finished trial's best checkpoint (the sweep needs ``keep_checkpoints: all``, or ``best`` for the best
point only), takes the head's ``mix.layer_logits`` and ``mix.gamma``, and writes beside the sweep's report:

* ``layer_weights.md``: per value of the sweep's compared key, the mean weight of each layer over seeds, how far the
  weights moved from their start (every layer ``1/L``: the largest and the total absolute change), and the scale;
* ``layer_weights.png``: the mean weight of each layer per value, the seeds' range shaded, the start dashed.

    python -m bertft sweep --config configs/sweeps/weighted_mix_lr_stsb.yaml
    python benchmarks/layer_weights.py outputs/sweeps/weighted_mix_lr_stsb

More sweep folders after the first (a sweep past the first one's edge) add their trials to the first one's outputs.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any

import torch


def trial_rows(folder: Path) -> list[dict[str, str]]:
    """The sweep's finished trials, from its ``trials.csv``."""
    with open(folder / "trials.csv", encoding="utf-8", newline="") as f:
        return [row for row in csv.DictReader(f) if row["state"] == "finished"]


def learned_mix(trial_folder: Path) -> tuple[list[float], float] | None:
    """The softmax layer weights and the scale in the trial's best checkpoint; None without one."""
    found = sorted(trial_folder.glob("**/checkpoints/best*.ckpt"))
    if not found:
        return None
    # A checkpoint this sweep wrote: it holds Lightning's own state beside the tensors, so not weights_only.
    state = torch.load(found[-1], map_location="cpu", weights_only=False)["state_dict"]
    logits = [v for k, v in state.items() if k.endswith("mix.layer_logits")]
    gammas = [v for k, v in state.items() if k.endswith("mix.gamma")]
    if not logits:
        raise SystemExit(f"{found[-1]}: no mix.layer_logits in the checkpoint; is the head a WeightedLayersHead?")
    return torch.softmax(logits[0].float(), dim=0).tolist(), float(gammas[0]) if gammas else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_folder", type=Path, help="where the outputs go, with its trials")
    parser.add_argument("more", type=Path, nargs="*", help="further sweep folders whose trials join the first's")
    parser.add_argument("--key", help="the searched key to group by (default: the sweep's compare key)")
    args = parser.parse_args()
    folder: Path = args.sweep_folder
    record = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    key = args.key or record.get("compare")
    if not key:
        raise SystemExit(f"{folder}: the sweep compares no key; give --key model.mix_lr (or another searched key)")
    metric = record["metric"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for sweep in [folder, *args.more]:
        for row in trial_rows(sweep):
            mix = learned_mix(sweep / "trials" / Path(row["folder"]).name)  # wherever the sweep was run from
            if mix is None:
                print(f"point {row['point']} seed {row['seed']}: no best checkpoint in {row['folder']}; skipped")
                continue
            weights, gamma = mix
            groups.setdefault(row[key], []).append(
                {"seed": int(row["seed"]), "weights": weights, "gamma": gamma, "value": float(row[metric])}
            )
    if not groups:
        raise SystemExit(f"{folder}: no finished trial with a best checkpoint")
    write_table(folder, key, metric, groups)
    write_plot(folder, key, groups)
    print((folder / "layer_weights.md").read_text(encoding="utf-8"))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean weight per layer, and how far the weights moved from the even start, over a value's seeds."""
    layers = len(runs[0]["weights"])
    start = 1.0 / layers
    mean = [statistics.mean(r["weights"][i] for r in runs) for i in range(layers)]
    moved_max = statistics.mean(max(abs(w - start) for w in r["weights"]) for r in runs)
    moved_total = statistics.mean(sum(abs(w - start) for w in r["weights"]) for r in runs)
    return {"mean": mean, "max_change": moved_max, "total_change": moved_total, "start": start}


def write_table(folder: Path, key: str, metric: str, groups: dict[str, list[dict[str, Any]]]) -> None:
    layers = len(next(iter(groups.values()))[0]["weights"])
    head = " | ".join(f"w{i}" for i in range(layers))
    lines = [
        f"# Learned layer weights per `{key}`",
        "",
        f"Mean over seeds of each layer's softmax weight (w0 = embeddings, w{layers - 1} = last layer; every weight"
        f" starts at 1/{layers} = {1 / layers:.3f}), the largest and the total move away from that start, the scale"
        f" `gamma` (starts at 1) and `{metric}`; from each trial's best checkpoint.",
        "",
        f"| `{key}` | n | {head} | largest move | total move | gamma | `{metric}` |",
        "|---|---:|" + "---:|" * layers + "---:|---:|---:|---|",
    ]
    for value, runs in sorted(groups.items(), key=lambda kv: float(kv[0]) if _number(kv[0]) else kv[0]):
        s = summary(runs)
        scores = [r["value"] for r in runs]
        spread = f" ± {statistics.stdev(scores):.4f}" if len(scores) > 1 else ""
        gamma = statistics.mean(r["gamma"] for r in runs)
        cells = [value, str(len(runs)), *(f"{w:.3f}" for w in s["mean"])]
        cells += [f"{s['max_change']:.3f}", f"{s['total_change']:.3f}", f"{gamma:.3f}"]
        cells.append(f"{statistics.mean(scores):.4f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    (folder / "layer_weights.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {v: runs for v, runs in groups.items()}
    (folder / "layer_weights.json").write_text(json.dumps({"key": key, "trials": data}, indent=1), encoding="utf-8")


def write_plot(folder: Path, key: str, groups: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = len(next(iter(groups.values()))[0]["weights"])
    xs = list(range(layers))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for value, runs in sorted(groups.items(), key=lambda kv: float(kv[0]) if _number(kv[0]) else kv[0]):
        s = summary(runs)
        low = [min(r["weights"][i] for r in runs) for i in xs]
        high = [max(r["weights"][i] for r in runs) for i in xs]
        (line,) = ax.plot(xs, s["mean"], marker="o", label=f"{key.split('.')[-1]} {value} ({len(runs)} seeds)")
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
    ax.axhline(1 / layers, color="grey", linestyle="--", linewidth=1, label=f"start (1/{layers})")
    ax.set_xticks(xs, ["emb"] + [str(i) for i in xs[1:]])
    ax.set_xlabel("hidden_states entry (emb = embeddings, then layers 1 to last)")
    ax.set_ylabel("softmax weight (mean over seeds)")
    ax.set_title("What the weighted-layer head learned")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "layer_weights.png", dpi=120)
    plt.close(fig)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()
