"""What LoRA saves against full fine-tuning: trainable share, checkpoint size, training step time and peak memory.

For each encoder and setting (full fine-tuning; LoRA r 8 on the attention projections, ``target_modules: auto``;
LoRA r 8 on every linear layer, ``all-linear``) one fresh process builds ``FineTuner`` with a MeanHead, runs AdamW
training steps on fixed batches (``--batch`` texts of ``--tokens`` tokens) and reports:

- the trainable parameters and their share of the model;
- the checkpoint's size (``bertft.training.checks.checkpoint_bytes``: what ``on_save_checkpoint`` keeps, plus
  AdamW's two moments per trained weight), and the full fine-tuning checkpoint's size for the ratio;
- the median step time (forward, backward, optimiser) after warm-up steps, and the process's peak RSS.

Encoders: the packaged MiniLM (real weights) and random DeBERTa-v2 and ModernBERT models of the same width and depth
(6 layers, 384 wide, 12 heads), to show the per-family target table at work; their step times compare settings, not
families. The settings of one encoder take turns for ``--rounds`` rounds (this host's speed drifts), and each figure
is the median over rounds. Prints a table and writes ``benchmarks/peft_cost.json``.

    python benchmarks/peft_cost.py                      # about 5 minutes on 2 CPU cores
    python benchmarks/peft_cost.py --rounds 1 --steps 3 # a quick check that it runs
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "lora-attention": {"r": 8, "target_modules": "auto"},
    "lora-all-linear": {"r": 8, "target_modules": "all-linear"},
}
SIZES = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def random_encoder(model_type: str, folder: Path) -> str:
    """A random encoder of MiniLM's size saved with ``save_pretrained``: its weights' values do not change the cost."""
    from transformers import AutoConfig, AutoModel

    extra = {"type_vocab_size": 0} if model_type == "deberta-v2" else {}  # as DeBERTa-v3's checkpoints
    if model_type == "modernbert":  # its special tokens default to ids past a 30,522-word vocabulary
        extra = {"pad_token_id": 0, "cls_token_id": 1, "sep_token_id": 2, "bos_token_id": 1, "eos_token_id": 2}
    config = AutoConfig.for_model(model_type, vocab_size=30522, **SIZES, **extra)
    AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def measure(encoder: str, setting: str, steps: int, warmup: int, batch: int, tokens: int, threads: int) -> dict:
    """One process's figures (run in a fresh process, so its peak RSS is this setting's alone)."""
    import torch

    from bertft.adapters import PeftSettings, count_parameters
    from bertft.model import FineTuner
    from bertft.training.checks import checkpoint_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    peft = SETTINGS[setting]
    model = FineTuner(encoder, task="classification", num_labels=2, peft=PeftSettings(**peft) if peft else None)
    model.train()
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.encoder.config.vocab_size if hasattr(model.encoder, "config") else 30522
    data = {
        "input_ids": torch.randint(5, min(vocab, 30000), (batch, tokens)),
        "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
    }
    labels = torch.randint(0, 2, (batch,))
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(data), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "trainable": trainable,
        "total": total,
        "share": trainable / total,
        "checkpoint_bytes": checkpoint_bytes(model),
        "step_s": statistics.median(times),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_child(encoder: str, setting: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", encoder, setting, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--tokens", str(args.tokens),
               "--threads", str(args.threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{encoder} {setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds in which every setting of an encoder runs once.")
    parser.add_argument("--steps", type=int, default=8, help="Timed training steps per process.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    parser.add_argument("--batch", type=int, default=32, help="Texts per batch (the quickstart's).")
    parser.add_argument("--tokens", type=int, default=64, help="Tokens per text (about SST-2's longest).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "peft_cost.json"))
    parser.add_argument("--child", nargs=2, metavar=("ENCODER", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = measure(*args.child, args.steps, args.warmup, args.batch, args.tokens, args.threads)
        print(json.dumps(figures))
        return

    from bertft.encoder import resolve_encoder

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        encoders = {
            "minilm (packaged)": resolve_encoder("minilm"),
            "deberta-v2 (random, MiniLM's size)": random_encoder("deberta-v2", Path(tmp) / "deberta"),
            "modernbert (random, MiniLM's size)": random_encoder("modernbert", Path(tmp) / "modernbert"),
        }
        for name, folder in encoders.items():
            rounds: dict[str, list[dict]] = {s: [] for s in SETTINGS}
            for r in range(args.rounds):
                for setting in SETTINGS if r % 2 == 0 else reversed(SETTINGS):  # take turns: the host's speed drifts
                    rounds[setting].append(run_child(folder, setting, args))
                    print(f"{name} {setting} round {r + 1}: {rounds[setting][-1]['step_s'] * 1e3:.0f} ms/step",
                          flush=True)  # fmt: skip
            results[name] = {}
            for setting, runs in rounds.items():
                first = runs[0]
                results[name][setting] = {
                    "trainable": first["trainable"],
                    "total": first["total"],
                    "share": first["share"],
                    "checkpoint_mb": first["checkpoint_bytes"] / 1e6,
                    "step_ms": statistics.median(run["step_s"] for run in runs) * 1e3,
                    "step_ms_runs": [round(run["step_s"] * 1e3, 1) for run in runs],
                    "peak_rss_mb": statistics.median(run["peak_rss_bytes"] for run in runs) / 2**20,
                }
            full = results[name]["full"]
            for figures in results[name].values():
                figures["checkpoint_vs_full"] = figures["checkpoint_mb"] / full["checkpoint_mb"]
                figures["step_vs_full"] = figures["step_ms"] / full["step_ms"]
                figures["rss_vs_full"] = figures["peak_rss_mb"] / full["peak_rss_mb"]
    settings = {k: vars(args)[k] for k in ("rounds", "steps", "warmup", "batch", "tokens", "threads")}
    Path(args.out).write_text(json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
    print(f"\n{'encoder':36} {'setting':16} {'trainable':>10} {'share':>7} {'ckpt MB':>8} {'x full':>7} "
          f"{'ms/step':>8} {'x full':>7} {'peak RSS MB':>12} {'x full':>7}")  # fmt: skip
    for name, by_setting in results.items():
        for setting, f in by_setting.items():
            print(f"{name:36} {setting:16} {f['trainable']:>10,} {100 * f['share']:>6.2f}% {f['checkpoint_mb']:>8.1f} "
                  f"{f['checkpoint_vs_full']:>7.3f} {f['step_ms']:>8.0f} {f['step_vs_full']:>7.2f} "
                  f"{f['peak_rss_mb']:>12.0f} {f['rss_vs_full']:>7.2f}")  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
