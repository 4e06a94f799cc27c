"""``data.long_texts: windows``: long texts cut into overlapping windows, merged back into one prediction per text."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from bertft import tasks
from bertft.cli import main
from bertft.data import LengthSortedSampler, TextDataModule, load_tokenizer

from .ddp import run_worker
from .helpers import cli_args, sst2_rows, write_tsv


def long_rows(n: int) -> list[tuple[str, str]]:
    """Real SST-2 sentences joined in threes: texts of 10 to 100 tokens, labelled by the first sentence."""
    rows = sst2_rows("train", 3 * n)
    return [(" ".join(s for s, _ in rows[3 * i : 3 * i + 3]), rows[3 * i][1]) for i in range(n)]


def test_windows_cover_each_text_with_stride_overlap_and_its_label(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "long.tsv", long_rows(30))
    dm = TextDataModule(train_file=str(path), quoting=False, max_length=16, long_texts="windows", stride=4,
                        cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm.setup("fit")
    data = dm.datasets["train"]
    tokenizer = load_tokenizer("minilm")
    texts = long_rows(30)
    assert dm.truncated["train"] == sum(len(tokenizer(t)["input_ids"]) > 16 for t, _ in texts) > 0
    by_row: dict[int, list[dict]] = {}
    for example in data:
        by_row.setdefault(example["row"], []).append(example)
    assert sorted(by_row) == list(range(30))
    for row, windows in by_row.items():
        assert [w["window"] for w in windows] == list(range(len(windows)))
        assert {w["labels"] for w in windows} == {texts[row][1]}
        assert all(len(w["input_ids"]) <= 16 for w in windows)
        inner = [w["input_ids"][1:-1] for w in windows]  # without [CLS] and [SEP]
        rebuilt = inner[0] + [t for piece in inner[1:] for t in piece[4:]]  # each window repeats `stride` tokens
        for a, b in zip(inner, inner[1:], strict=False):
            assert a[-4:] == b[:4]
        assert rebuilt == tokenizer(texts[row][0])["input_ids"][1:-1]


def test_merge_windows_mean_and_max() -> None:
    rows = torch.tensor([7, 3, 7, 7])
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, -3.0], [2.0, 0.0]])
    texts, mean, first = tasks.merge_windows(rows, logits, "mean")
    assert texts.tolist() == [3, 7]
    assert torch.allclose(mean, torch.tensor([[0.0, 2.0], [2.0, -1.0]]))
    assert first.tolist() == [1, 0]
    _, top, _ = tasks.merge_windows(rows, logits, "max")
    assert torch.allclose(top, torch.tensor([[0.0, 2.0], [3.0, 0.0]]))


def test_every_window_of_a_text_is_evaluated_on_one_rank() -> None:
    groups = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5]
    lengths = [16, 16, 9, 12, 16, 5, 3, 16, 16, 16, 2, 7]
    shares = [LengthSortedSampler(lengths, num_replicas=2, rank=r, groups=groups).indices for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(len(groups)))  # every window once
    assert not {groups[i] for i in shares[0]} & {groups[i] for i in shares[1]}  # no text split across ranks
    for share in shares:
        assert [lengths[i] for i in share] == sorted((lengths[i] for i in share), reverse=True)


def test_test_and_predict_count_texts_not_windows(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", long_rows(24))
    test = write_tsv(tmp_path / "test.tsv", long_rows(36)[24:])
    args = [f"--model.encoder={tiny_bert_dir}", "--data.quoting=false", "--data.max_length=16",
            "--data.long_texts=windows", "--data.stride=4", "--data.eval_batch_size=5"]  # fmt: skip
    cli = main(["fit", *args, f"--data.train_file={train}", f"--data.test_file={test}", "--trainer.max_steps=3",
                *cli_args(tmp_path, command=None, logger=False)])  # fmt: skip
    model, data = cli.model.eval(), cli.datamodule
    assert data.datasets["test"].num_rows > 12  # more windows than texts
    rows, logits, labels = [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            rows.append(batch["row"])
            logits.append(model(batch))
            labels.append(batch["labels"])
    texts, merged, first = tasks.merge_windows(torch.cat(rows), torch.cat(logits), "mean")
    assert texts.tolist() == list(range(12))
    accuracy = (merged.argmax(-1) == torch.cat(labels)[first]).float().mean()
    assert torch.isclose(cli.trainer.callback_metrics["test/acc"], accuracy)

    out = tmp_path / "predictions.csv"
    main(["predict", *args, f"--data.predict_file={test}", f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
          f"--prediction.output_file={out}", *cli_args(tmp_path / "p", command=None, logger=False)])  # fmt: skip
    with out.open(newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["sentence"] for r in written] == [t for t, _ in long_rows(36)[24:]]  # one row per text, in order
    probs = torch.tensor([[float(r["prob_0"]), float(r["prob_1"])] for r in written])
    assert torch.allclose(probs, torch.softmax(merged, dim=-1), atol=1e-5)


@pytest.mark.slow
def test_ddp_validation_counts_each_windowed_text_once(tmp_path: Path, tiny_bert_dir: Path) -> None:
    # 25 texts (odd: the ranks get unequal shares) of 2 to 8 windows; the same untrained model validated by 1 and 2
    # processes. Texts split across ranks would be merged from partial windows and counted twice.
    val = write_tsv(tmp_path / "val.tsv", long_rows(25))
    args = [
        "validate", f"--model.encoder={tiny_bert_dir}", f"--data.train_file={val}", f"--data.val_file={val}",
        "--data.quoting=false", "--data.max_length=12", "--data.long_texts=windows", "--data.stride=2",
        "--data.eval_batch_size=4", "--seed_everything=0", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", f"--data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    one = main([*args, f"--trainer.default_root_dir={tmp_path / '1'}"]).trainer.callback_metrics
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path / '2'}"]
    ranks = [r["metrics"] for r in run_worker([*args, *ddp])]  # timed out, same collectives on both ranks
    assert len(ranks) == 2
    for key in ("val/acc", "val/f1", "val/mcc"):
        assert ranks[0][key] == ranks[1][key] == pytest.approx(float(one[key]), abs=1e-6), key
