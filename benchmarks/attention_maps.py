"""What reading attention maps costs: AttentionMapHead (eager attention, maps returned) against MeanHead (sdpa).

A head that reads ``attentions`` makes the encoder run eager attention, since ``sdpa`` returns no maps, and hold every
layer's ``(batch, heads, seq, seq)`` probabilities. This measures that cost on the packaged MiniLM, three variants:

* ``mean_sdpa``: MeanHead, the encoder's default (sdpa) attention: the baseline;
* ``mean_eager``: MeanHead with eager attention, no maps asked for: the cost of the attention kernel alone;
* ``attention_map``: AttentionMapHead: eager attention and the maps, read by the head.

Each variant runs in its own process (so its peak RSS is its own), in turns (ABC ABC ...: a drifting host hits all
alike), on SST-2 training sentences (batch 32, up to 128 tokens) and on long texts (batch 8, 256 tokens): training
steps (forward, backward, AdamW) and inference (no grad). Ratios are taken against ``mean_sdpa`` within each round.

    python benchmarks/attention_maps.py --rounds 2        # about 6 minutes on 2 cores; writes attention_maps.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("mean_sdpa", "mean_eager", "attention_map")


def worker(variant: str, shape: str, steps: int, threads: int) -> dict[str, Any]:
    """One variant in this process: median train step and inference batch times, and the peak RSS."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    from bertft.data import load_tokenizer
    from bertft.heads import AttentionMapHead, MeanHead
    from bertft.model import FineTuner

    torch.manual_seed(0)
    head = AttentionMapHead() if variant == "attention_map" else MeanHead()
    model = FineTuner("minilm", head=head, label_names=["0", "1"])
    if variant == "mean_eager":
        model.encoder.set_attn_implementation("eager")
    attention = model.encoder.config._attn_implementation
    tokenizer = load_tokenizer("minilm")
    with open(ROOT / "bertft" / "bundled" / "sst2" / "train.tsv", encoding="utf-8") as f:  # sentence<TAB>label
        texts = [line.split("\t")[0] for line in f.read().splitlines()[1:4001]]
    if shape == "sst2":
        batch_size, max_length = 32, 128
    else:  # long: consecutive sentences joined up to 256 tokens
        batch_size, max_length = 8, 256
        texts = [" ".join(texts[i : i + 24]) for i in range(0, len(texts), 24)]
    batches = []
    for i in range(steps + 2):
        rows = texts[i * batch_size : (i + 1) * batch_size]
        batches.append(dict(tokenizer(rows, padding=True, truncation=True, max_length=max_length, return_tensors="pt")))
    labels = torch.randint(0, 2, (batch_size,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    step_s = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch), labels[: len(batch["input_ids"])])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:  # two untimed warm-up steps
            step_s.append(time.perf_counter() - start)
    model.eval()
    infer_s = []
    with torch.inference_mode():
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            model(batch)
            if i >= 2:
                infer_s.append(time.perf_counter() - start)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[2:]) / len(batches[2:])
    return {
        "variant": variant,
        "shape": shape,
        "attention": attention,
        "train_step_ms": 1000 * statistics.median(step_s),
        "infer_batch_ms": 1000 * statistics.median(infer_s),
        "seq_len": int(batches[2]["input_ids"].shape[1]),
        "real_tokens_per_batch": tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant, shape and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "attention_maps.json"))
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, steps=args.steps, threads=args.threads)))
        return
    runs: list[dict[str, Any]] = []
    t0 = time.time()
    for round_ in range(args.rounds):
        for shape in ("sst2", "long"):
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                command = [sys.executable, __file__, "--worker", variant, shape, "--steps", str(args.steps)]
                command += ["--threads", str(args.threads)]
                out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True, cwd=ROOT)
                result = {**json.loads(out.stdout.strip().splitlines()[-1]), "round": round_}
                runs.append(result)
                print(
                    f"round {round_} {shape:5} {variant:14} ({result['attention']}): train step "
                    f"{result['train_step_ms']:.0f} ms, inference batch {result['infer_batch_ms']:.0f} ms, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    summary = summarize(runs)
    Path(args.out).write_text(json.dumps({"runs": runs, "summary": summary, "wall_s": time.time() - t0}, indent=1))
    print(f"\n{markdown(summary)}\nwritten: {args.out} ({(time.time() - t0) / 60:.1f} min)")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (shape, variant): median times and RSS over rounds, and their ratios to mean_sdpa within each round."""
    rows = []
    for shape in ("sst2", "long"):
        for variant in VARIANTS:
            mine = [r for r in runs if r["shape"] == shape and r["variant"] == variant]
            base = {r["round"]: r for r in runs if r["shape"] == shape and r["variant"] == "mean_sdpa"}
            row: dict[str, Any] = {"shape": shape, "variant": variant, "seq_len": mine[0]["seq_len"]}
            for key in ("train_step_ms", "infer_batch_ms", "peak_rss_mb"):
                row[key] = statistics.median(r[key] for r in mine)
                row[key + "_ratio"] = statistics.median(r[key] / base[r["round"]][key] for r in mine)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| texts | variant | train step ms (ratio) | inference batch ms (ratio) | peak RSS MB (ratio) |",
        "|---|---|---|---|---|",
    ]
    names = {"sst2": "SST-2, batch 32", "long": "long, batch 8"}
    for r in rows:
        lines.append(
            f"| {names[r['shape']]} (padded to {r['seq_len']}) | {r['variant']} | {r['train_step_ms']:.0f} "
            f"({r['train_step_ms_ratio']:.2f}) | {r['infer_batch_ms']:.0f} ({r['infer_batch_ms_ratio']:.2f}) | "
            f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb_ratio']:.2f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
