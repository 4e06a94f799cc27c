"""fp32 against bf16 autocast for a MiniLM training step on this machine, and whether bertft's default is the faster.

Runs the packaged MiniLM with a mean head on real SST-2 batches (bertft's own length-grouped batches, batch 32):
forward, backward and a fused AdamW step, every batch shape warmed up first, then the two precisions interleaved over
``--rounds`` rounds so machine noise hits both alike. Prints each round's ratio (bf16 time / fp32 time), the median,
and the precision :func:`bertft.training.precision.default_precision` picks here.

    python benchmarks/precision.py              # about 2 minutes on 2 CPU cores
    python benchmarks/precision.py --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bertft.data import TextDataModule  # noqa: E402
from bertft.model import FineTuner  # noqa: E402
from bertft.training.precision import default_precision  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=15, help="training steps per precision and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    data = TextDataModule(
        train_file="bundled://sst2/train.tsv", text_column="sentence", label_column="label", quoting=False,
        tokenizer="minilm", batch_size=32, group_by_length=True,
    )  # fmt: skip
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [{k: v.to(args.device) for k, v in next(loader).items()} for _ in range(args.steps)]
    model = FineTuner(encoder="minilm", num_labels=2, label_names=["0", "1"]).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)

    def run(bf16: bool) -> float:
        autocast = torch.autocast(args.device, dtype=torch.bfloat16) if bf16 else nullcontext()
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            with autocast:
                loss = F.cross_entropy(model(batch).float(), batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(False), run(True)  # warm-up: every batch shape in both precisions
    ratios = []
    for r in range(args.rounds):
        fp32, bf16 = (run(False), run(True)) if r % 2 == 0 else tuple(reversed((run(True), run(False))))
        ratios.append(fp32 / bf16)
        print(f"round {r + 1}: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s, bf16 speed = {ratios[-1]:.2f}x fp32", flush=True)
    median = statistics.median(ratios)
    faster = "bf16-mixed" if median > 1.0 else "32-true"
    chosen = default_precision("cuda" if args.device == "cuda" else "cpu")
    print(f"median bf16 speed: {median:.2f}x fp32 ({args.steps} steps x {args.rounds} rounds on {args.device})")
    print(f"faster here: {faster}; bertft's default here: {chosen} -> {'agrees' if faster == chosen else 'DISAGREES'}")


if __name__ == "__main__":
    main()
