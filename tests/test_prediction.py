"""PredictionWriter: rows back in input order, one per input row, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from bertft.data import TextDataModule
from bertft.training.prediction import PredictionWriter, merge_outputs, prediction_frame, write_atomically

from .helpers import quiet_trainer, sst2_rows, write_tsv

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


@pytest.fixture
def predict_file(tmp_path: Path) -> tuple[str, list[str]]:
    """The first 50 real SST-2 test sentences, without labels."""
    texts = [text for text, _ in sst2_rows("test", 50)]
    return write_tsv(tmp_path / "predict.tsv", [(t,) for t in texts], header=("sentence",)), texts


class FakeModel(L.LightningModule):
    """Stands in for the real model: its outputs are a known function of each example's token count."""

    def __init__(self, task: str, label_names: list[str]) -> None:
        super().__init__()
        self.task, self.label_names, self.threshold = task, label_names, 0.5
        self.dummy = nn.Parameter(torch.zeros(()))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        n = batch["attention_mask"].sum(dim=1).float()  # (B,)
        if self.task == "regression":
            return {"row": batch["row"], "value": n}
        logits = torch.stack([n / 10 - j for j in range(len(self.label_names))], dim=1)  # (B, L)
        probs = logits.softmax(-1) if self.task == "classification" else logits.sigmoid()
        return {"row": batch["row"], "probs": probs}


def predict(tmp_path: Path, dm: TextDataModule, model: FakeModel, output: str | None) -> Path:
    writer = PredictionWriter(output)
    trainer = quiet_trainer(callbacks=[writer], default_root_dir=tmp_path)
    trainer.predict(model, datamodule=dm, return_predictions=False)
    return Path(output) if output else tmp_path / "predictions.csv"


def token_counts(texts: list[str], dm: TextDataModule) -> list[int]:
    return [len(dm.tokenizer(t, truncation=True, max_length=dm.max_length)["input_ids"]) for t in texts]


def test_classification_rows_come_back_in_input_order(tmp_path: Path, predict_file: tuple[str, list[str]]) -> None:
    path, texts = predict_file
    dm = TextDataModule(predict_file=path, quoting=False, label_names=["0", "1"], eval_batch_size=8)
    out = predict(tmp_path, dm, FakeModel("classification", ["0", "1"]), output=None)  # default: root dir
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["sentence", "prediction", "prob_0", "prob_1"]
    assert frame["sentence"].tolist() == texts  # batches ran sorted by length; the file follows the input
    assert (frame["prob_0"] + frame["prob_1"]).sub(1).abs().max() < 1e-6
    expected = torch.tensor([[n / 10, n / 10 - 1] for n in token_counts(texts, dm)]).softmax(-1)[:, 1]
    torch.testing.assert_close(torch.tensor(frame["prob_1"].tolist()), expected)
    assert frame["prediction"].astype(str).tolist() == ["1" if p > 0.5 else "0" for p in expected.tolist()]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_multilabel_jsonl_and_regression_csv(tmp_path: Path, predict_file: tuple[str, list[str]]) -> None:
    path, texts = predict_file
    names = ["a", "b", "c"]
    dm = TextDataModule(predict_file=path, quoting=False, task="multilabel", label_names=names)
    out = predict(tmp_path, dm, FakeModel("multilabel", names), output=str(tmp_path / "out" / "p.jsonl"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sentence"] for r in records] == texts
    for record, n in zip(records, token_counts(texts, dm), strict=True):
        assert record["prediction"] == [name for j, name in enumerate(names) if n / 10 - j > 0]
        assert set(record) == {"sentence", "prediction", "prob_a", "prob_b", "prob_c"}

    dm = TextDataModule(predict_file=path, quoting=False, task="regression")
    out = predict(tmp_path, dm, FakeModel("regression", []), output=str(tmp_path / "r.csv"))
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["sentence", "prediction"]
    assert frame["prediction"].tolist() == [float(n) for n in token_counts(texts, dm)]


def test_merge_drops_rows_repeated_by_distributed_padding() -> None:
    parts = [
        {"row": torch.tensor([3, 0]), "probs": torch.tensor([[0.1, 0.9], [0.8, 0.2]])},
        {"row": torch.tensor([2, 1, 3]), "probs": torch.tensor([[0.5, 0.5], [0.3, 0.7], [0.1, 0.9]])},
    ]
    merged = merge_outputs(parts)
    assert merged["row"].tolist() == [0, 1, 2, 3]
    frame = prediction_frame(merged, task="classification", label_names=["neg", "pos"])
    assert frame["prediction"].tolist() == ["neg", "pos", "neg", "pos"]
    multi = prediction_frame(merged, task="multilabel", label_names=["x", "y"], threshold=0.6, label_delimiter="|")
    assert multi["prediction"].tolist() == ["x", "y", "", "y"]


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "predictions.csv"
    target.write_text("previous complete file\n")
    frame = pd.DataFrame({"sentence": ["a", "b"], "prediction": ["0", "1"]})

    def dies_halfway(self: pd.DataFrame, f, **kwargs) -> None:
        f.write("sentence,prediction\na,")
        raise KeyboardInterrupt  # as if the job were killed mid-write

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(frame, target)
    assert target.read_text() == "previous complete file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # the temporary file is gone too
    monkeypatch.undo()
    write_atomically(frame, target)
    assert pd.read_csv(target, dtype=str).equals(frame)


def test_output_file_must_be_csv_or_jsonl() -> None:
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        PredictionWriter("predictions.parquet")
    with pytest.raises(ValueError, match="epoch"):
        PredictionWriter(write_interval="batch")


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    """A report written into a shared sweep folder is readable by others, as with open() (not mkstemp's 0o600)."""
    import os
    import stat

    from bertft.io import atomic_write_text

    atomic_write_text(tmp_path / "report.md", "x")
    with open(tmp_path / "plain.md", "w") as f:
        f.write("x")
    assert stat.S_IMODE(os.stat(tmp_path / "report.md").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.md").st_mode)
