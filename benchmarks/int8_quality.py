"""What int8 ONNX Runtime costs in quality and gains in speed, against fp32 (PyTorch and ONNX Runtime).

Scores exported models (``bertft export --onnx --quantize int8``) with each backend on the bundled data: SST-2's
labelled evaluation split (``bundled://sst2/test.tsv``, GLUE's dev set, 872 sentences; accuracy) and STS-B's dev
split (``bundled://stsb/sts-dev.csv``, 1,500 pairs; Pearson and Spearman), plus offline throughput (texts per
second, batches of 32). Prints a table and writes ``benchmarks/int8_quality.json``.

    python -m bertft fit --config configs/quickstart.yaml
    python -m bertft export --ckpt_path outputs/quickstart/csv/version_N/checkpoints/<best>.ckpt \
        --output_dir sst2-model --onnx --quantize int8
    python -m bertft fit --config configs/stsb.yaml
    python -m bertft export --ckpt_path outputs/stsb/csv/version_N/checkpoints/<best>.ckpt \
        --output_dir stsb-model --onnx --quantize int8
    python benchmarks/int8_quality.py --sst2 sst2-model --stsb stsb-model
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bertft import load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "bertft" / "bundled"
BACKENDS = ("torch", "onnx", "onnx-int8")


def sst2() -> tuple[list[Any], list[int]]:
    with open(BUNDLED / "sst2" / "test.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def stsb() -> tuple[list[Any], list[float]]:
    with open(BUNDLED / "stsb" / "sts-dev.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[5], r[6]) for r in rows], [float(r[4]) for r in rows]


def rank(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()  # no ties in model outputs; the gold scores' ties matter little here


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def score(folder: str, task: str, backend: str) -> dict[str, Any]:
    texts, gold = sst2() if task == "sst2" else stsb()
    predictor = load(folder, backend=backend)
    predictor.logits(texts[:32])  # warm-up
    started = time.perf_counter()
    logits = predictor.logits(texts, batch_size=32)
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"texts_per_s": round(len(texts) / seconds, 1)}
    if task == "sst2":
        out["accuracy"] = round(float((logits.argmax(-1) == torch.tensor(gold)).float().mean()), 4)
    else:
        values, target = logits.squeeze(-1), torch.tensor(gold)
        out["pearson"] = round(pearson(values, target), 4)
        out["spearman"] = round(pearson(rank(values), rank(target)), 4)
    out["predictions"] = logits.argmax(-1).tolist() if task == "sst2" else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", help="An exported SST-2 model with both ONNX graphs.")
    parser.add_argument("--stsb", help="An exported STS-B model with both ONNX graphs.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "int8_quality.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    for task, folder in (("sst2", args.sst2), ("stsb", args.stsb)):
        if not folder:
            continue
        rows = {backend: score(folder, task, backend) for backend in BACKENDS}
        if task == "sst2":
            fp32, int8 = rows["onnx"].pop("predictions"), rows["onnx-int8"].pop("predictions")
            rows["torch"].pop("predictions")
            rows["int8_label_agreement_with_fp32"] = round(sum(a == b for a, b in zip(fp32, int8, strict=True))
                                                           / len(fp32), 4)  # fmt: skip
        else:
            for r in rows.values():
                r.pop("predictions")
        results[task] = rows
        print(task, json.dumps(rows, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
