"""Where a CPU training step's time goes, and how fast its matmuls run against this machine's matmul peak.

The quickstart's model (packaged MiniLM, mean head, bertft's parameter groups and fused AdamW) on bertft's own
length-grouped SST-2 batches of 32, every batch shape warmed up first. Two measurements:

1. the torch profiler over ``--steps`` training steps: each kind of op's share of the step (matmuls, dropout masks,
   the AdamW step, zeroing, the rest);
2. every matmul of those steps (forward, input gradient and weight gradient of each linear layer, at each batch's
   shape) timed alone with ``torch.mm``, interleaved with a large square matmul (this machine's fp32 peak), so the
   ratio is taken within one run.

If the matmuls already run at the large matmul's rate, no kernel can make them faster: a framework that runs the same
model on the same batches can only win on the rest of the step. The last lines say how much the rest would have to
shrink for a given speed-up over a framework with the same matmul time.

    python benchmarks/step_budget.py                  # about 1.5 minutes on 2 CPU cores
    python benchmarks/step_budget.py --steps 20 --target 1.15
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from stepped_ab import quickstart_steps  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train_speed import matmul_flops  # noqa: E402

# Profiler op name -> the row it counts in; everything else is "rest".
KINDS = {
    "aten::mm": "matmuls (linear layers)",
    "aten::addmm": "matmuls (linear layers)",
    "aten::bmm": "attention matmuls (bmm)",
    "aten::bernoulli_": "dropout masks (bernoulli_)",
    "aten::_fused_adamw_": "AdamW step (fused)",
    "aten::fill_": "zeroing (fill_)",
}


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="profiled training steps (distinct batches)")
    p.add_argument("--target", type=float, default=1.15, help="speed-up to size the rest of the step for")
    p.add_argument("--peak-size", type=int, default=3072, help="side of the square matmul that measures the peak")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    batches, step, model = quickstart_steps(["--trainer.logger=false"], "sst2", args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    share: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        share[KINDS.get(event.key, "rest (GELU, layer norm, softmax, adds, copies, ...)")] += event.self_cpu_time_total
    total = sum(share.values())
    print(f"Step time by op, {args.steps} SST-2 steps (batch 32), torch profiler, {args.threads} threads:")
    for kind, us in sorted(share.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:52s} {100 * us / total:5.1f}%")
    print(f"  {'mean step':52s} {total / 1e3 / args.steps:5.0f} ms")

    # Every linear layer's three matmuls, at the shapes the steps ran them, against the peak, interleaved.
    calls: list[list[tuple[int, int, int]]] = []  # per step: (rows, in, out) of each linear layer's call

    def record(m: torch.nn.Linear, args: tuple, out: torch.Tensor) -> None:
        calls[-1].append((args[0].numel() // m.in_features, m.in_features, m.out_features))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for batch in batches:
        calls.append([])
        step(batch)
    for hook in hooks:
        hook.remove()
    n = args.peak_size
    flops, seconds, peaks = 0.0, 0.0, []
    for shapes in calls:
        peaks.append(max(matmul_flops(n)) / 1e9)  # train_speed.py's peak: best of 4
        for (rows, d_in, d_out), count in sorted(Counter(shapes).items()):
            x, w, dy = torch.randn(rows, d_in), torch.randn(d_in, d_out), torch.randn(rows, d_out)
            for left, right in ((x, w), (dy, w.t().contiguous()), (dy.t().contiguous(), x)):  # fwd, dX, dW
                seconds += count * timed(lambda left=left, right=right: left @ right, 3)
                flops += count * 2 * rows * d_in * d_out
    rate, peak = flops / seconds / 1e9, statistics.median(peaks)
    alone_ms, in_steps_ms = 1e3 * seconds / len(batches), share["matmuls (linear layers)"] / 1e3 / len(batches)
    print(f"\nLinear-layer matmuls timed alone at the steps' shapes: {rate:.1f} GFLOP/s, {alone_ms:.0f} ms per step "
          f"(inside the profiled steps: {in_steps_ms:.0f} ms); {n}x{n} matmul: {peak:.1f} GFLOP/s (median of "
          f"{len(peaks)}, range {min(peaks):.1f}-{max(peaks):.1f}); ratio {rate / peak:.2f}")  # fmt: skip

    matmul = (share["matmuls (linear layers)"] + share["attention matmuls (bmm)"]) / total
    rest_needed = 1 / args.target - matmul
    print(f"\nMatmuls are {100 * matmul:.0f}% of a step, the rest {100 * (1 - matmul):.0f}%. To run {args.target:.2f}x "
          f"a framework that spends the same time in the same matmuls and as much as this one on the rest, the rest "
          f"must shrink to {100 * rest_needed:.0f}% of today's step: {100 * (1 - rest_needed / (1 - matmul)):.0f}% "
          "less.")  # fmt: skip


if __name__ == "__main__":
    main()
