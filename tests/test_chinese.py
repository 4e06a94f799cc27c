"""Chinese text: reviews and MSRA NER (real slices in tests/fixtures/zh) on a character-level Chinese BERT, and the
warning when an encoder's vocabulary cannot read a split (Chinese under the packaged, English MiniLM)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest

from bertft import FineTuner
from bertft.data import TextDataModule, TokenDataModule
from bertft.data.conll import TOKENS
from bertft.deploy.inference import EncoderWithHead, Predictor
from bertft.heads import MeanHead, TokenHead

from .families import ZH
from .helpers import quiet_trainer

UNKNOWN = "of its tokens are unknown to the tokenizer of"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fit_and_test(model: FineTuner, data: L.LightningDataModule) -> dict[str, float]:
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    return trainer.test(model, datamodule=data, verbose=False)[0]


def sentiment(tokenizer: str, cache: Path) -> TextDataModule:
    return TextDataModule(
        train_file=str(ZH / "sentiment_train.csv"), val_file=str(ZH / "sentiment_dev.csv"),
        test_file=str(ZH / "sentiment_test.csv"), text_column="text", tokenizer=tokenizer, max_length=64,
        batch_size=32, cache_dir=str(cache),
    )  # fmt: skip


def msra(tokenizer: str, cache: Path) -> TokenDataModule:
    return TokenDataModule(
        train_file=str(ZH / "msra_train.txt"), val_file=str(ZH / "msra_dev.txt"), test_file=str(ZH / "msra_test.txt"),
        tokenizer=tokenizer, max_length=48, stride=8, batch_size=32, cache_dir=str(cache),
    )  # fmt: skip


def test_chinese_reviews_classify_on_a_character_level_bert(family_dir, tmp_path: Path) -> None:
    encoder = str(family_dir("bert-chinese"))
    data = sentiment(encoder, tmp_path)
    assert data.label_names == ["neg", "pos"]
    model = FineTuner(encoder, head=MeanHead(), label_names=data.label_names, lr=1e-3)
    metrics = fit_and_test(model, data)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert data.unknown_fraction["train"] < 0.01  # its vocabulary has the reviews' characters
    first = data.datasets["train"][0]["input_ids"]
    text = data.raw_split("train")["text"][0]
    assert len(first) == len(text) + 2  # one token per character (these reviews hold no Latin words), [CLS], [SEP]


def test_msra_ner_tags_every_character(family_dir, tmp_path: Path) -> None:
    encoder = str(family_dir("bert-chinese"))
    data = msra(encoder, tmp_path)
    assert set(data.label_names) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    names = data.label_names
    model = FineTuner(encoder, head=TokenHead(), task="token", num_labels=len(names), label_names=names, lr=1e-3)
    metrics = fit_and_test(model, data)
    assert 0.0 <= metrics["test/f1"] <= 1.0
    assert data.datasets["test"].num_rows > 40  # sentences longer than 48 characters were cut into windows
    predictor = Predictor(EncoderWithHead(model.encoder, model.head), data.tokenizer, "token", data.label_names,
                          max_length=24)  # fmt: skip
    sentences = [list(s) for s in data.raw_split("test")[TOKENS][:10]]
    for chars, result in zip(sentences, predictor.predict_tokens(sentences, stride=4), strict=True):
        assert result["tokens"] == chars
        assert len(result["tags"]) == len(chars)


def test_unknown_tokens_warn_on_chinese_under_minilm(tmp_path: Path) -> None:
    data = sentiment("minilm", tmp_path)
    with pytest.warns(UserWarning, match=rf"train \(.*sentiment_train.csv\): 6\d% {UNKNOWN} 'minilm'") as record:
        data.setup("fit")
    message = next(str(w.message) for w in record if UNKNOWN in str(w.message))
    assert "[UNK]" in message
    assert "choose an encoder whose vocabulary does" in message
    assert 0.6 < data.unknown_fraction["train"] < 0.7  # 64% on these 200 reviews
    with pytest.warns(UserWarning, match=rf"train \(.*msra_train.txt\): \d\d% {UNKNOWN}"):
        msra("minilm", tmp_path).setup("fit")  # the token path warns too


def test_no_unknown_token_warning_on_sst2(tmp_path: Path) -> None:
    data = TextDataModule(train_file="bundled://sst2/test.tsv", quoting=False, tokenizer="minilm",
                          cache_dir=str(tmp_path))  # fmt: skip
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data.setup("fit")
    assert not [w for w in record if UNKNOWN in str(w.message)]
    assert data.unknown_fraction["train"] == 0.0
