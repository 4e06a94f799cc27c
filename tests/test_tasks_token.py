"""Token classification (CoNLL-2003 NER): reader, sub-token alignment, windows, entity F1, CLI fit -> predict."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bertft import FineTuner, tasks
from bertft.cli import main
from bertft.data import DataError, TokenCollator, TokenDataModule, load_tokenizer, read_token_file
from bertft.data.conll import TAGS, TOKENS
from bertft.data.files import Table
from bertft.data.tokens import FIRST, WORD_IDS, TokenEncodeSettings, encode_sentences, owners, windows
from bertft.heads import MeanHead, TokenHead, WeightedLayersHead
from bertft.ner import EntityScore, entities, entity_scores

from .helpers import ROOT, subset, train_losses, word_predictions, write_conll

TAG_SET = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def dev() -> Table:
    return read_token_file("bundled://conll2003/dev.txt")


@pytest.mark.parametrize(
    ("split", "sentences", "tokens"),
    [("train", 14041, 203621), ("dev", 3250, 51362), ("test", 3453, 46435)],
)
def test_conll_reader_counts_match_the_data_readme(split: str, sentences: int, tokens: int) -> None:
    table = read_token_file(f"bundled://conll2003/{split}.txt")
    assert len(table.frame) == sentences
    assert sum(len(t) for t in table.frame[TOKENS]) == tokens
    assert all(len(w) == len(t) for w, t in zip(table.frame[TOKENS], table.frame[TAGS], strict=True))
    assert {tag for tags in table.frame[TAGS] for tag in tags} == set(TAG_SET)
    assert not any("-DOCSTART-" in words for words in table.frame[TOKENS])


def test_reader_formats_and_errors(tmp_path: Path) -> None:
    four_columns = tmp_path / "four.txt"
    four_columns.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    table = read_token_file(str(four_columns))
    assert table.frame[TOKENS].tolist() == [["EU", "rejects"], ["Peter"]]
    assert table.frame[TAGS].tolist() == [["B-ORG", "O"], ["B-PER"]]
    assert table.lines == [3, 7]

    untagged = tmp_path / "words.txt"
    untagged.write_text("Peter\nBlackburn\n\nBRUSSELS\n")
    assert read_token_file(str(untagged)).frame[TAGS].tolist() == [None, None]

    mixed = tmp_path / "mixed.txt"
    mixed.write_text("Peter B-PER\nBlackburn\n")
    with pytest.raises(DataError, match="line 1"):
        read_token_file(str(mixed))

    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}) + "\n")
    assert read_token_file(str(jsonl)).frame[TAGS].tolist() == [["B-ORG", "O"]]
    jsonl.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG"]}) + "\n")
    with pytest.raises(DataError, match="one tag per token"):
        read_token_file(str(jsonl))


def test_tag_vocabulary_from_the_training_file_or_label_names(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text("EU B-ORG\nrejects O\n\nPeter B-PER\n")
    assert TokenDataModule(train_file=str(train)).label_names == ["B-ORG", "B-PER", "O"]
    given = ["O", "B-PER", "B-ORG", "I-ORG"]  # any order, and tags the file lacks, are allowed
    assert TokenDataModule(train_file=str(train), label_names=given).label_names == given
    with pytest.raises(DataError, match=rf"{train} has labels \['B-PER'\] that are not in `label_names`"):
        TokenDataModule(train_file=str(train), label_names=["O", "B-ORG"]).label_names  # noqa: B018


def split_heavy(table: Table, tokenizer, n: int) -> list[int]:
    """Rows of the sentences with the most sub-tokens per word (names and numbers split into many pieces)."""
    ratio = [len(tokenizer(words, is_split_into_words=True)["input_ids"]) / len(words) for words in table.frame[TOKENS]]
    return sorted(range(len(ratio)), key=lambda i: -ratio[i])[:n]


@pytest.mark.parametrize("label_subtokens", ["first", "all"])
def test_alignment_round_trip_on_real_sentences(dev: Table, tokenizer, label_subtokens: str) -> None:
    rows = list(range(150)) + split_heavy(dev, tokenizer, 50)
    table = subset(dev, rows)
    dataset, meta = encode_sentences(table, tokenizer, TokenEncodeSettings(True, max_length=128, stride=32))
    assert meta["windowed"] == 0
    assert dataset.num_rows == len(rows)
    longest_split = max(sum(1 for w in ex[WORD_IDS] if w == k) for ex in dataset for k in set(ex[WORD_IDS]) - {-1})
    assert longest_split >= 5  # some real words split into many sub-tokens
    collator = TokenCollator(tokenizer.pad_token_id, TAG_SET, label_subtokens=label_subtokens)
    found = word_predictions(dataset, collator, TAG_SET)
    for i, tags in enumerate(table.frame[TAGS]):
        assert [found[i][w] for w in range(len(tags))] == tags

    # sub-token labels: the first piece has the word's tag; the others are ignored, or inside the entity with "all"
    for example in dataset:
        labels = collator.token_labels(example)
        for w, first, label in zip(example[WORD_IDS], example[FIRST], labels, strict=True):
            tag = example["labels"][w] if w >= 0 else None
            if w < 0:
                assert label == -100
            elif first:
                assert TAG_SET[label] == tag
            elif label_subtokens == "first":
                assert label == -100
            else:
                assert TAG_SET[label] == tag.replace("B-", "I-")


def test_windows_merge_back_every_word(dev: Table, tokenizer) -> None:
    lengths = [len(words) for words in dev.frame[TOKENS]]
    rows = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:30] + split_heavy(dev, tokenizer, 10)
    table = subset(dev, rows)
    dataset, meta = encode_sentences(table, tokenizer, TokenEncodeSettings(True, max_length=16, stride=4))
    assert meta["windowed"] >= 30  # the longest sentences (up to 109 words) need many 14-sub-token windows
    assert max(len(ids) for ids in dataset["input_ids"]) <= 16
    collator = TokenCollator(tokenizer.pad_token_id, TAG_SET)
    found = word_predictions(dataset, collator, TAG_SET)
    for i, tags in enumerate(table.frame[TAGS]):
        assert sorted(found[i]) == list(range(len(tags)))  # every word, exactly once
        assert [found[i][w] for w in range(len(tags))] == tags


def test_window_spans_and_owners() -> None:
    assert windows(5, 8, 2) == [(0, 5)]
    spans = windows(20, 8, 3)
    assert spans == [(0, 8), (5, 13), (10, 18), (15, 20)]
    assert all(b[0] == a[1] - 3 for a, b in zip(spans, spans[1:], strict=False))
    # the window where each has most context on its nearer side; a tie (position 6) goes to the earlier window
    assert owners([0, 6, 7, 12, 19], spans) == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="stride"):
        windows(20, 8, 8)


def test_entities_from_iob_tags() -> None:
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "O", "B-MISC"]
    assert [tuple(e) for e in entities(tags)] == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 6),
                                                  ("MISC", 7, 8)]  # fmt: skip


def random_predictions(gold: list[list[str]], seed: int, noise: float) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(TAG_SET) if rng.random() < noise else t for t in tags] for tags in gold]


def test_entity_f1_equals_seqeval(dev: Table) -> None:
    seqeval = pytest.importorskip("seqeval.metrics")
    gold = dev.frame[TAGS].tolist()
    cases = [random_predictions(gold, seed, noise) for seed, noise in [(0, 0.02), (1, 0.1), (2, 0.5)]]
    rng = random.Random(3)  # short random sequences hit ill-formed starts (I- after O, type changes) often
    short_gold = [[rng.choice(TAG_SET) for _ in range(rng.randint(1, 6))] for _ in range(400)]
    cases_short = [(short_gold, random_predictions(short_gold, 4, 0.5))]
    for g, p in [(gold, c) for c in cases] + cases_short + [(gold, gold)]:
        ours = entity_scores(g, p)
        assert ours.f1 == pytest.approx(seqeval.f1_score(g, p), abs=1e-12)
        assert ours.precision == pytest.approx(seqeval.precision_score(g, p), abs=1e-12)
        assert ours.recall == pytest.approx(seqeval.recall_score(g, p), abs=1e-12)
        assert ours.accuracy == pytest.approx(seqeval.accuracy_score(g, p), abs=1e-12)
    from seqeval.metrics.sequence_labeling import get_entities

    for tags in short_gold:
        assert [tuple(e) for e in entities(tags)] == [(t, s, e + 1) for t, s, e in get_entities(tags)]


def test_entity_metric_regroups_words_in_any_order(dev: Table) -> None:
    gold = dev.frame[TAGS].tolist()[:300]
    predicted = random_predictions(gold, 5, 0.1)
    index = {t: i for i, t in enumerate(TAG_SET)}
    items = [(r, w, index[p], index[g]) for r, (gs, ps) in enumerate(zip(gold, predicted, strict=True))
             for w, (g, p) in enumerate(zip(gs, ps, strict=True))]  # fmt: skip
    random.Random(0).shuffle(items)
    items += items[:50]  # DDP padding repeats some examples
    metric = EntityScore(TAG_SET, "f1")
    for start in range(0, len(items), 97):
        rows, words, preds, target = torch.tensor(items[start : start + 97]).T
        metric.update(preds, target, rows, words)
    assert metric.compute().item() == pytest.approx(entity_scores(gold, predicted).f1, abs=1e-6)
    # After a DDP sync torchmetrics hands compute() each "cat" state as one tensor instead of a list.
    synced = EntityScore(TAG_SET, "f1")
    for name in ("preds", "target", "rows", "words"):
        setattr(synced, name, torch.cat(getattr(metric, name)))
    synced._update_count = 1
    assert synced.compute().item() == pytest.approx(entity_scores(gold, predicted).f1, abs=1e-6)


def test_per_token_heads_and_shape_checks(tiny_bert_dir: Path, dev: Table, tokenizer) -> None:
    table = subset(dev, list(range(8)))
    dataset, _ = encode_sentences(table, tokenizer, TokenEncodeSettings(True, max_length=32, stride=8))
    batch = TokenCollator(tokenizer.pad_token_id, TAG_SET)(list(dataset))
    for head in (TokenHead(), WeightedLayersHead(reduce="none")):  # the BERT paper's feature-based NER is the second
        model = FineTuner(str(tiny_bert_dir), head=head, task="token", num_labels=9, label_names=TAG_SET)
        logits = model(batch)
        assert logits.shape == (*batch["input_ids"].shape, 9)
        loss = tasks.loss("token", logits, batch["labels"])
        loss.backward()
        assert torch.isfinite(loss)
    assert model.head.mix.layer_logits.grad is not None
    with pytest.raises(ValueError, match="one vector per token"):
        FineTuner(str(tiny_bert_dir), head=MeanHead(), task="token", num_labels=9, label_names=TAG_SET).training_step(
            batch, 0
        )


def test_fit_then_predict_through_the_cli(tmp_path: Path, tiny_bert_dir: Path, dev: Table) -> None:
    train = write_conll(tmp_path / "train.txt", dev, range(0, 160))
    val = write_conll(tmp_path / "val.txt", dev, range(160, 200))
    main(
        [
            "fit",
            f"--config={ROOT / 'configs' / 'conll2003.yaml'}",
            f"--model.encoder={tiny_bert_dir}",
            "--model.lr=1.0e-3",
            f"--data.train_file={train}",
            f"--data.val_file={val}",
            f"--data.test_file={val}",
            "--data.max_length=24",  # small windows: long sentences are split and merged back
            "--data.stride=6",
            "--data.batch_size=16",
            "--trainer.max_epochs=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'logs'}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--data.cache_dir={tmp_path / 'cache'}",
        ]
    )
    losses = train_losses(tmp_path / "logs")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # learning: the loss goes down
    config = next(tmp_path.rglob("config.yaml"))
    ckpt = next(tmp_path.rglob("last.ckpt"))

    words_only = write_conll(tmp_path / "predict.txt", dev, range(300, 340), tags=False)
    out = tmp_path / "tags.jsonl"
    main(["predict", f"--config={config}", f"--ckpt_path={ckpt}", f"--data.predict_file={words_only}",
          f"--prediction.output_file={out}", "--trainer.logger=false"])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["tokens"] for r in rows] == dev.frame[TOKENS].tolist()[300:340]
    for r in rows:
        assert len(r["tags"]) == len(r["tokens"])  # one tag per original word, windows merged back
        assert set(r["tags"]) <= set(TAG_SET)
        expected = [{"text": " ".join(r["tokens"][e.start : e.end]), "type": e.type, "start": e.start, "end": e.end}
                    for e in entities(r["tags"])]  # fmt: skip
        assert r["entities"] == expected


def test_predictor_tags_words_like_a_direct_forward_and_windows_long_sentences(tiny_bert_dir: Path, dev: Table) -> None:
    from bertft.deploy.inference import EncoderWithHead, Predictor

    model = FineTuner(str(tiny_bert_dir), head=TokenHead(), task="token", num_labels=9, label_names=TAG_SET).eval()
    tok = load_tokenizer(str(tiny_bert_dir))
    sentences = [list(s) for s in dev.frame[TOKENS][:20]]
    wide = Predictor(EncoderWithHead(model.encoder, model.head), tok, "token", TAG_SET, max_length=128)
    results = wide.predict(sentences)
    for words, result in zip(sentences, results, strict=True):  # no windows: the same as one forward pass
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(dict(enc))[0]
        word_ids = enc.word_ids(0)
        firsts = [p for p, w in enumerate(word_ids) if w is not None and (p == 0 or word_ids[p - 1] != w)]
        assert result["tokens"] == words
        assert result["tags"] == [TAG_SET[i] for i in logits[firsts].argmax(-1).tolist()]
        assert [(e["type"], e["start"], e["end"]) for e in result["entities"]] == list(
            map(tuple, entities(result["tags"]))
        )
    narrow = Predictor(EncoderWithHead(model.encoder, model.head), tok, "token", TAG_SET, max_length=12)
    longest = sorted(sentences, key=len)[-3:]
    for words, result in zip(longest, narrow.predict_tokens(longest, stride=4), strict=True):
        assert len(result["tags"]) == len(words)  # windows merged back: every word tagged
        assert all(t in TAG_SET for t in result["tags"])
    with pytest.raises(TypeError, match="lists of words"):
        wide.predict_tokens(["EU rejects German call"])
