"""Sentence pairs + regression on the real STS Benchmark: reading the files as they are, pairs, CLI fit -> predict."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from bertft.cli import main
from bertft.data import DataError, ReadOptions, TextDataModule, read_table

from .helpers import CONFIGS, bundled_lines, cli_args, train_losses, write_lines

COLUMNS = ("genre", "file", "year", "id", "score", "sentence1", "sentence2")
OPTIONS = ReadOptions(file_format="tsv", quoting=False, header=False, column_names=COLUMNS, extra_fields="ignore")


@pytest.mark.parametrize(("split", "pairs"), [("train", 5749), ("dev", 1500), ("test", 1379)])
def test_reader_takes_the_files_as_they_are(split: str, pairs: int) -> None:
    table = read_table(f"bundled://stsb/sts-{split}.csv", OPTIONS)
    assert len(table.frame) == pairs
    assert list(table.frame.columns) == list(COLUMNS)
    scores = table.frame["score"].astype(float)
    assert scores.between(0.0, 5.0).all()
    assert table.frame["sentence2"].str.len().gt(0).all()  # the extra trailing fields never shift a sentence


def test_extra_fields_are_an_error_unless_ignored() -> None:
    strict = ReadOptions(file_format="tsv", quoting=False, header=False, column_names=COLUMNS)
    with pytest.raises(DataError, match="extra_fields: ignore"):
        read_table("bundled://stsb/sts-train.csv", strict)


def test_pairs_are_encoded_with_token_type_ids(tmp_path: Path) -> None:
    data = TextDataModule(
        train_file="bundled://stsb/sts-dev.csv",
        text_column="sentence1",
        text_pair_column="sentence2",
        label_column="score",
        task="regression",
        file_format="tsv",
        quoting=False,
        header=False,
        column_names=list(COLUMNS),
        extra_fields="ignore",
        batch_size=8,
        cache_dir=str(tmp_path),
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["labels"].dtype == torch.float
    assert batch["labels"].shape == (8,)
    types = batch["token_type_ids"]
    for row in range(8):
        real = batch["attention_mask"][row].bool()
        # [CLS] a [SEP] -> type 0, then b [SEP] -> type 1
        assert types[row][real][0] == 0
        assert types[row][real][-1] == 1
        assert (types[row][real].diff() >= 0).all()


def test_fit_then_predict_through_the_cli(tmp_path: Path, tiny_bert_dir: Path) -> None:
    lines = bundled_lines("stsb/sts-train.csv")
    nine = [line for line in lines if line.count("\t") == 8][:20]
    train = write_lines(tmp_path / "train.csv", lines[:140] + nine)  # the 9-field lines included
    val = write_lines(tmp_path / "val.csv", bundled_lines("stsb/sts-dev.csv")[:48])
    args = cli_args(
        tmp_path / "run",
        "--model.lr=1.0e-3",
        "--trainer.max_epochs=1",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.save_dir={tmp_path / 'logs'}",
        configs=[CONFIGS / "stsb.yaml"],
        encoder=tiny_bert_dir,
        train=train,
        val=val,
        test=val,
        batch_size=8,
        logger="lightning.pytorch.loggers.CSVLogger",
        cache_dir=tmp_path / "cache",
    )
    main(args)
    losses = train_losses(tmp_path / "logs")
    assert sum(losses[-3:]) < sum(losses[:3])  # MSE from an untrained head far from 0..5 falls quickly

    out = tmp_path / "preds.csv"
    config, ckpt = next(tmp_path.rglob("config.yaml")), next(tmp_path.rglob("last.ckpt"))
    main(cli_args(tmp_path / "run", f"--ckpt_path={ckpt}", f"--prediction.output_file={out}", command="predict",
                  configs=[config], predict=val, logger=False, cache_dir=tmp_path / "cache"))  # fmt: skip
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = read_table(val, OPTIONS).frame
    assert [r["sentence1"] for r in rows] == expected["sentence1"].tolist()  # input order, both texts kept
    assert [r["sentence2"] for r in rows] == expected["sentence2"].tolist()
    assert all(float(r["prediction"]) == float(r["prediction"]) for r in rows)  # finite numbers, not NaN
