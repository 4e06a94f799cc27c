"""Issue 20's measurements on real data with the packaged MiniLM: class weights, long documents, the held-out split.

Each experiment runs the real command line (``python -m bertft fit/predict``) in a subprocess and appends one JSON
line per run to ``benchmarks/real_data_options.jsonl`` as soon as it ends, so a partial run keeps what it measured.

    python benchmarks/real_data_options.py imbalance --seeds 0 1 2 --steps 300
    python benchmarks/real_data_options.py long_docs --train-docs 600 --test-docs 400
    python benchmarks/real_data_options.py split
    python benchmarks/real_data_options.py table          # markdown tables of everything measured so far

- ``imbalance``: SST-2's bundled training rows subsampled (seed 0) to 3,800 negatives and 200 positives (5%),
  trained ``--steps`` steps with and without ``model.class_weights: balanced``; the last weights predict GLUE's SST-2
  dev set (``bundled://sst2/test.tsv``, 872 rows) and the script computes macro-F1 and the positive class's recall.
- ``long_docs``: 20 Newsgroups (``../shared/data/20ng``), random training and test subsets (seed 0); truncation at
  128 and at 512 tokens, and ``long_texts: windows`` at 128 tokens (stride 32, mean of logits); test accuracy counts
  documents (windows merged), wall time is the whole ``fit`` command (tokenising, training, testing).
- ``split``: ``val_fraction`` on SST-2 rows: the held-out rows' hash after ``fit``, in the checkpoint, after
  ``validate`` from that checkpoint, after resuming ``fit`` from it, and under another seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "real_data_options.jsonl"
SST2 = ROOT / "bertft" / "bundled" / "sst2"
NG20 = ROOT.parent / "shared" / "data" / "20ng"
if not NG20.is_dir():
    NG20 = Path("/work/shared/data/20ng")
# One thread: on a shared 2-core machine two threads per run spend their time waiting for each other.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def bertft(*args: str) -> tuple[float, str]:
    """Runs ``python -m bertft ...``; its wall time and stderr (raises with the tail when it fails)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bertft", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bertft {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def record(entry: dict) -> None:
    with RESULTS.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)


def last_metrics(root: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for metrics in sorted(root.rglob("metrics.csv")):
        with metrics.open(newline="") as f:
            for row in csv.DictReader(f):
                values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


def common(out: Path, seed: int) -> list[str]:
    return [
        "--model.encoder=minilm",
        f"--seed_everything={seed}",
        f"--data.seed={seed}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=bertft.training.loggers.CSVLogger",
        "--trainer.log_every_n_steps=10",
        "--tracking.misclassified=0",
        "--resume.every_n_steps=0",
        f"--trainer.default_root_dir={out}",
        f"--data.cache_dir={out.parent / 'cache'}",
    ]


# ----- class imbalance ---------------------------------------------------------------------------------------------


def imbalanced_sst2(folder: Path, positives: int = 200, negatives: int = 3800) -> Path:
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    rng = random.Random(0)
    pos = rng.sample([r for r in rows if r[1] == "1"], positives)
    neg = rng.sample([r for r in rows if r[1] == "0"], negatives)
    chosen = pos + neg
    rng.shuffle(chosen)
    path = folder / "sst2_5pct_pos.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in chosen), encoding="utf-8")
    return path


def scores(predictions: Path, gold: list[str]) -> dict[str, float]:
    with predictions.open(newline="") as f:
        predicted = [row["prediction"] for row in csv.DictReader(f)]
    assert len(predicted) == len(gold)
    f1s, recall = [], {}
    for c in ("0", "1"):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        recall[c] = tp / (tp + fn)
    acc = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    return {"macro_f1": statistics.mean(f1s), "pos_recall": recall["1"], "neg_recall": recall["0"], "acc": acc}


def imbalance(seeds: list[int], steps: int, batch_size: int, max_length: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bertft-imbalance-"))
    train = imbalanced_sst2(work)
    gold = [line.split("\t")[1] for line in (SST2 / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    for seed in seeds:
        for weights in ("null", "balanced"):
            out = work / f"{weights}-{seed}"
            wall, _ = bertft(
                "fit", *common(out, seed), f"--data.train_file={train}", "--data.quoting=false",
                f"--model.class_weights={weights}", f"--trainer.max_steps={steps}", f"--data.batch_size={batch_size}",
                f"--data.max_length={max_length}",
            )  # fmt: skip
            ckpt = next(out.rglob("last.ckpt"))
            predictions = out / "predictions.csv"
            bertft(
                "predict", "--model.encoder=minilm", "--data.predict_file=bundled://sst2/test.tsv",
                "--data.quoting=false", f"--ckpt_path={ckpt}", f"--prediction.output_file={predictions}",
                f"--data.max_length={max_length}",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
                f"--data.cache_dir={work / 'cache'}",
            )  # fmt: skip
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            weight = state.get("class_weight")
            record({"experiment": "imbalance", "seed": seed, "class_weights": weights, "steps": steps,
                    "batch_size": batch_size, "max_length": max_length,
                    "class_weight": weight.tolist() if weight is not None else None, "fit_s": round(wall, 1),
                    **scores(predictions, gold)})  # fmt: skip


# ----- long documents ----------------------------------------------------------------------------------------------


def subset(source: Path, n: int, target: Path, classes: list[str] | None) -> Path:
    with source.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if classes is None or r["label"] in classes]
    chosen = random.Random(0).sample(rows, n)
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(chosen)
    return target


LONG_ARMS = {
    "truncate 128": ["--data.max_length=128"],
    "truncate 512": ["--data.max_length=512"],
    "windows 128 (stride 32)": ["--data.max_length=128", "--data.long_texts=windows", "--data.stride=32"],
}


def long_docs(
    train_docs: int, test_docs: int, epochs: int, arms: list[str], classes: list[str] | None, seed: int = 0
) -> None:
    work = Path(tempfile.mkdtemp(prefix="bertft-20ng-"))
    train = subset(NG20 / "train.csv", train_docs, work / "train.csv", classes)
    test = subset(NG20 / "test.csv", test_docs, work / "test.csv", classes)
    for name in arms:
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        wall, err = bertft(
            "fit", *common(out, seed), f"--data.train_file={train}", f"--data.test_file={test}",
            "--data.text_column=text", "--data.batch_size=8", f"--trainer.max_epochs={epochs}", "--model.lr=1.0e-4",
            *LONG_ARMS[name],
        )  # fmt: skip
        metrics = last_metrics(out)
        summary = [line for line in err.splitlines() if line.startswith(("train (", "test ("))]
        record({"experiment": "long_docs", "arm": name, "seed": seed, "train_docs": train_docs, "test_docs": test_docs,
                "classes": classes or "all 20", "epochs": epochs, "steps": int(metrics.get("step", 0)) + 1,
                "test_acc": metrics.get("test/acc"), "test_f1": metrics.get("test/f1"), "fit_s": round(wall, 1),
                "data": summary})  # fmt: skip


def retest(work: Path, test_docs: int, classes: list[str] | None) -> None:
    """Tests each arm's last checkpoint (in ``work``, from ``long_docs``) on a larger test subset."""
    test = subset(NG20 / "test.csv", test_docs, work / f"test-{test_docs}.csv", classes)
    for name in LONG_ARMS:
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        ckpt = next(out.rglob("last.ckpt"))
        wall, _ = bertft(
            "test", *common(out / f"test-{test_docs}", 0), f"--data.test_file={test}", "--data.text_column=text",
            "--data.batch_size=8", *LONG_ARMS[name], f"--ckpt_path={ckpt}",
        )  # fmt: skip
        metrics = last_metrics(out / f"test-{test_docs}")
        record({"experiment": "long_docs_retest", "arm": name, "test_docs": test_docs,
                "classes": classes or "all 20", "test_acc": metrics.get("test/acc"), "test_f1": metrics.get("test/f1"),
                "test_s": round(wall, 1)})  # fmt: skip


# ----- split reproducibility ---------------------------------------------------------------------------------------


def split() -> None:
    work = Path(tempfile.mkdtemp(prefix="bertft-split-"))
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[:2001]
    train = work / "train.tsv"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["--data.quoting=false", f"--data.train_file={train}", "--data.val_fraction=0.1", "--data.batch_size=32"]

    def logged(err: str) -> str:
        """The held-out rows' hash, from the `val: ...; rows <hash>)` line."""
        line = next(line for line in err.splitlines() if line.startswith("val: "))
        return line.rsplit("rows ", 1)[1].rstrip(")")

    def saved(out: Path) -> str:
        newest = max(out.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        state = torch.load(newest, map_location="cpu", weights_only=True)
        return next(v for k, v in state.items() if k.endswith("TextDataModule"))["val_split"]["digest"]

    out = work / "fit"
    _, err = bertft("fit", *common(out, 3), *base, "--trainer.max_steps=20", "--trainer.val_check_interval=10")
    ckpt = max(out.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    runs = [{"step": "fit, seed 3", "logged": logged(err), "checkpoint": saved(out),
             "val_acc": last_metrics(out).get("val/acc")}]  # fmt: skip
    fresh = work / "validate"  # its own cache folder: the split is drawn again, not read back
    _, err = bertft("validate", *common(fresh, 3), *base, f"--data.cache_dir={work / 'fresh-cache'}",
                    f"--ckpt_path={ckpt}")  # fmt: skip
    runs.append({"step": "validate from last.ckpt, empty cache", "logged": logged(err),
                 "val_acc": last_metrics(fresh).get("val/acc")})  # fmt: skip
    _, err = bertft("fit", *common(out, 3), *base, "--trainer.max_steps=30", "--trainer.val_check_interval=10",
                    f"--ckpt_path={ckpt}")  # fmt: skip
    runs.append({"step": "fit resumed from last.ckpt", "logged": logged(err), "checkpoint": saved(out)})
    _, err = bertft("fit", *common(work / "other", 4), *base, "--trainer.max_steps=1")
    runs.append({"step": "fit, seed 4 (control)", "logged": logged(err)})
    record({"experiment": "split", "train_rows": 2000, "val_fraction": 0.1, "runs": runs})


def table() -> None:
    entries = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    imb = [e for e in entries if e["experiment"] == "imbalance"]
    if imb:
        print("| class_weights | seeds | macro-F1 | positive recall | negative recall | accuracy |")
        print("| --- | --- | --- | --- | --- | --- |")
        for weights in ("null", "balanced"):
            rows = [e for e in imb if e["class_weights"] == weights]
            cells = []
            for key in ("macro_f1", "pos_recall", "neg_recall", "acc"):
                values = [e[key] for e in rows]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
            print(f"| {weights} | {len(rows)} | " + " | ".join(cells) + " |")
    for e in entries:
        if e["experiment"] == "long_docs":
            print(f"| {e['arm']} | {e['train_docs']} / {e['test_docs']} | {e['steps']} | {e['test_acc']:.3f} | "
                  f"{e['fit_s']:.0f} s |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True)
    p = sub.add_parser("imbalance")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p = sub.add_parser("long_docs")
    p.add_argument("--train-docs", type=int, default=600)
    p.add_argument("--test-docs", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=list(LONG_ARMS))
    p.add_argument("--classes", nargs="+", default=None, help="keep only these newsgroups (default: all 20)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the document subsets always use seed 0)")
    p = sub.add_parser("retest")
    p.add_argument("work", type=Path, help="the long_docs run's folder (/tmp/bertft-20ng-...)")
    p.add_argument("--test-docs", type=int, default=400)
    p.add_argument("--classes", nargs="+", default=None)
    sub.add_parser("split")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.experiment == "imbalance":
        imbalance(args.seeds, args.steps, args.batch_size, args.max_length)
    elif args.experiment == "long_docs":
        long_docs(args.train_docs, args.test_docs, args.epochs, args.arms, args.classes, args.seed)
    elif args.experiment == "retest":
        retest(args.work, args.test_docs, args.classes)
    elif args.experiment == "split":
        split()
    else:
        table()


if __name__ == "__main__":
    main()
