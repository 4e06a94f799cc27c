"""``data.val_fraction``: a validation split held out of the training file, stratified, seeded, and reproduced."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from bertft.cli import main
from bertft.data import DataError, TextDataModule, TokenDataModule
from bertft.data.split import hold_out

from .helpers import cli_args, sst2_rows, write_tsv


@pytest.fixture
def train(tmp_path: Path) -> Path:
    return write_tsv(tmp_path / "train.tsv", sst2_rows("train", 200))


def make(train: Path, tmp_path: Path, **kwargs) -> TextDataModule:
    return TextDataModule(train_file=str(train), quoting=False, cache_dir=str(tmp_path / "cache"), **kwargs)


def rows(dm: TextDataModule, split: str) -> set[int]:
    return set(dm.datasets[split]["row"])


def test_held_out_rows_are_stratified_seeded_disjoint_and_cached(
    train: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        dm = make(train, tmp_path, val_fraction=0.1, seed=1)
        dm.setup("fit")
    assert f"val: 10% of {train}, stratified, 20 rows (train keeps 180; rows {dm._held_out.digest})" in caplog.messages
    train_rows, val_rows = rows(dm, "train"), rows(dm, "val")
    assert len(val_rows) == 20
    assert not train_rows & val_rows
    assert train_rows | val_rows == set(range(200))
    labels = [y for _, y in sst2_rows("train", 200)]
    overall, held = Counter(labels), Counter(labels[r] for r in val_rows)
    for label, n in overall.items():  # each class keeps its share, to the row
        assert abs(held[label] - n * 20 / 200) < 1
    assert list((tmp_path / "cache" / "values").glob("val-split-*.json"))

    again = make(train, tmp_path, val_fraction=0.1, seed=1)
    again.setup("fit")
    assert rows(again, "val") == val_rows
    drawn_again = make(train, tmp_path / "fresh", val_fraction=0.1, seed=1)  # no cache: drawn anew, the same
    drawn_again.setup("fit")
    assert rows(drawn_again, "val") == val_rows
    other = make(train, tmp_path, val_fraction=0.1, seed=2)
    other.setup("fit")
    assert rows(other, "val") != val_rows
    count = make(train, tmp_path, val_fraction=30, seed=1)  # a whole number is a count of rows
    count.setup("fit")
    assert len(rows(count, "val")) == 30
    assert dm.label_counts() == [Counter(labels[r] for r in train_rows)[c] for c in ("0", "1")]


def test_non_classification_tasks_split_at_random() -> None:
    labels = ["a"] * 90 + ["b"] * 10
    stratified = hold_out(list(range(100)), labels, 0.2, 0, stratify=True, path="t")
    assert Counter(labels[r] for r in stratified.rows) == {"a": 18, "b": 2}
    random_split = hold_out(list(range(100)), labels, 0.2, 0, stratify=False, path="t")
    assert len(random_split.rows) == 20
    assert not random_split.stratified
    windows = hold_out([0, 0, 1, 2, 2, 2, 3, 4], None, 0.4, 0, stratify=False, path="t")
    assert len(windows.rows) == 2
    assert windows.total == 5
    with pytest.raises(DataError, match="leaving no training row"):
        hold_out(list(range(10)), None, 10, 0, stratify=False, path="t")


def test_regression_data_module_splits_at_random(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_tsv(tmp_path / "reg.tsv", [(s, f"{i / 10:.1f}") for i, (s, _) in enumerate(sst2_rows("train", 40))])
    with caplog.at_level(logging.INFO):
        dm = make(Path(path), tmp_path, task="regression", val_fraction=0.25)
        dm.setup("fit")
    assert any(", random, 10 rows (train keeps 30; rows " in m for m in caplog.messages)


def test_fit_validate_and_resume_hold_out_the_same_rows(
    train: Path, tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(command: str, out: Path, *extra: str):  # noqa: ANN202 - a LightningCLI
        args = cli_args(out, "--data.val_fraction=0.2", "--data.seed=5", *extra, command=command,
                        encoder=tiny_bert_dir, train=train, quoting=False, batch_size=16, logger=False)  # fmt: skip
        return main(args)

    fit = run("fit", tmp_path, "--trainer.max_steps=4", "--trainer.val_check_interval=4")
    held = fit.datamodule._held_out
    assert held is not None
    assert len(held.rows) == 40
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["TextDataModule"]["val_split"]
    assert state == {"val_fraction": 0.2, "seed": 5, "rows": 40, "digest": held.digest}
    assert fit.trainer.checkpoint_callback.monitor == "val/acc"  # validation data: the best checkpoint is kept

    validate = run("validate", tmp_path / "v", f"--ckpt_path={ckpt}")
    assert validate.datamodule._held_out == held
    assert validate.trainer.callback_metrics["val/acc"] == fit.trainer.callback_metrics["val/acc"]

    resumed = run("fit", tmp_path / "r", "--trainer.max_steps=6", f"--ckpt_path={ckpt}")
    assert resumed.datamodule._held_out == held
    with pytest.raises(SystemExit) as exit_info:  # another fraction would validate on other rows: refused
        run("fit", tmp_path / "x", "--data.val_fraction=0.3", f"--ckpt_path={ckpt}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the checkpoint was trained holding out 40 validation rows (val_fraction=0.2, seed=5)" in err


def test_token_data_module_holds_out_whole_sentences(tmp_path: Path) -> None:
    source = (Path(__file__).resolve().parents[1] / "bertft" / "bundled" / "conll2003" / "dev.txt").read_text()
    blocks = [b for b in source.split("\n\n") if b.strip() and "-DOCSTART-" not in b][:40]
    path = tmp_path / "train.txt"
    path.write_text("\n\n".join(blocks) + "\n")
    dm = TokenDataModule(train_file=str(path), val_fraction=0.25, max_length=12, stride=4, cache_dir=str(tmp_path))
    dm.setup("fit")
    train_rows, val_rows = rows(dm, "train"), rows(dm, "val")
    assert len(val_rows) == 10
    assert dm.datasets["train"].num_rows > len(train_rows)  # long sentences were cut into windows
    assert not train_rows & val_rows  # ...whose windows all land on one side
    assert train_rows | val_rows == set(range(40))
