"""The data layer on real SST-2 rows with the real packaged MiniLM tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn

from bertft.data import DataError, LengthGroupedBatchSampler, LengthSortedSampler, TextDataModule, load_tokenizer

from .helpers import sst2_rows, write_tsv

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture
def sst2(tmp_path: Path) -> dict[str, str]:
    """Small real SST-2 train/dev/test files (the first rows of the bundled ones)."""
    return {
        "train_file": write_tsv(tmp_path / "train.tsv", sst2_rows("train", 300)),
        "val_file": write_tsv(tmp_path / "dev.tsv", sst2_rows("dev", 80)),
        "test_file": write_tsv(tmp_path / "test.tsv", sst2_rows("test", 40)),
    }


def make(files: dict[str, str], **kwargs) -> TextDataModule:
    return TextDataModule(**files, quoting=False, **kwargs)


# ----- happy path -------------------------------------------------------------------------------------------------


def test_num_labels_right_after_init_reads_only_labels(sst2: dict[str, str], tmp_path: Path) -> None:
    dm = make(sst2)
    assert dm.num_labels == 2
    assert dm.label_names == ["0", "1"]
    assert not (tmp_path / "cache").exists()  # nothing tokenised or cached yet


def test_a_second_run_learns_the_classes_without_reading_the_training_file(
    sst2: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make(sst2)
    assert first.label_names == ["0", "1"]
    first.setup("fit")  # the classes are cached with the tokenised splits
    python_api = make(sst2, cache_dir=str(tmp_path / "other"))
    python_api.setup("fit")  # splits first, classes after (Python users): cached as soon as they are learnt
    assert python_api.label_names == ["0", "1"]
    assert list((tmp_path / "other" / "values").glob("label-classes-*.json"))
    reads: list[str] = []
    real_read = TextDataModule._read
    monkeypatch.setattr(
        TextDataModule, "_read", lambda self, path, data=None: reads.append(path) or real_read(self, path, data)
    )
    assert make(sst2).label_names == ["0", "1"]
    assert reads == []
    # New contents under the same path are read again and get their own classes, still checked against label_names.
    rows = [(text, {"0": "neg", "1": "pos"}[label]) for text, label in sst2_rows("train", 50)]
    assert make({"train_file": write_tsv(Path(sst2["train_file"]), rows)}).label_names == ["neg", "pos"]
    assert reads == [sst2["train_file"]]
    with pytest.raises(DataError, match=r"labels \['neg', 'pos'\] that are not in `label_names`"):
        make({"train_file": sst2["train_file"]}, label_names=["0", "1"]).label_names  # noqa: B018


def test_bundled_paths_resolve_to_the_package() -> None:
    dm = TextDataModule(train_file="bundled://sst2/test.tsv", quoting=False)
    assert dm.num_labels == 2
    with pytest.raises(DataError, match=r"bundled://sst2/nope.tsv does not exist.*bundled://sst2/train.tsv"):
        TextDataModule(train_file="bundled://sst2/nope.tsv").num_labels  # noqa: B018


def test_batches_are_padded_to_their_longest_example(sst2: dict[str, str], tokenizer) -> None:
    dm = make(sst2, batch_size=16)
    dm.setup("fit")
    texts = [t for t, _ in sst2_rows("train", 300)]
    for batch in [next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))]:
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "row", "labels"}
        lengths = batch["attention_mask"].sum(dim=1)
        assert batch["input_ids"].shape[1] == lengths.max()  # padded to the longest, not to max_length
        assert lengths.min() < lengths.max() or len(set(lengths.tolist())) == 1
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        assert batch["labels"].dtype == torch.long
        assert batch["row"].dtype == torch.long
    batch = next(iter(dm.train_dataloader()))
    for i, row in enumerate(batch["row"].tolist()):  # `row` points back at the example's text
        ids = tokenizer(texts[row], truncation=True, max_length=128)["input_ids"]
        assert batch["input_ids"][i, : len(ids)].tolist() == ids


def test_label_vocabulary_is_built_from_train_and_reused(tmp_path: Path) -> None:
    names = {"0": "negative", "1": "positive"}
    train = [(t, names[y]) for t, y in sst2_rows("train", 100)]
    dev = [(t, names[y]) for t, y in sst2_rows("dev", 30)]
    dm = make({"train_file": write_tsv(tmp_path / "t.tsv", train), "val_file": write_tsv(tmp_path / "v.tsv", dev)})
    assert dm.label_names == ["negative", "positive"]
    dm.setup("fit")
    got = {}
    for batch in dm.val_dataloader():
        got.update(zip(batch["row"].tolist(), batch["labels"].tolist(), strict=True))
    assert [got[i] for i in range(len(dev))] == [dm.label_names.index(y) for _, y in dev]


def test_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [(t, y) for (t, _), y in zip(sst2_rows("train", 6), ["10", "9", "2", "10", "9", "2"], strict=True)]
    assert make({"train_file": write_tsv(tmp_path / "t.tsv", rows)}).label_names == ["2", "9", "10"]


def test_prepare_builds_the_cache_and_setup_loads_it(sst2: dict[str, str], tmp_path: Path) -> None:
    dm = make(sst2)
    dm.prepare_data()
    assert dm.cache_events == {"train": "built", "val": "built", "test": "built"}
    dm.setup("fit")
    assert dm.cache_events["train"] == "loaded"
    assert dm.cache_events["val"] == "loaded"

    again = make(sst2)  # a second run: every split comes from disk
    again.setup("fit")
    assert again.cache_events == {"train": "loaded", "val": "loaded"}
    assert again.datasets["train"][:] == dm.datasets["train"][:]
    assert not [p for p in (tmp_path / "cache" / "splits").iterdir() if p.name.startswith(".")]  # no temp left

    other = make(sst2, max_length=16)  # a setting that changes the result changes the key
    other.setup("validate")
    assert other.cache_events == {"val": "built"}


def test_corrupt_cache_is_rebuilt(sst2: dict[str, str], tmp_path: Path) -> None:
    dm = make(sst2)
    dm.setup("validate")
    entry = next((tmp_path / "cache" / "splits").glob("val-*"))
    arrow = next(entry.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])  # truncated, as by a full disk
    again = make(sst2)
    again.setup("validate")
    assert again.cache_events == {"val": "built"}
    assert again.datasets["val"][:] == dm.datasets["val"][:]
    third = make(sst2)
    third.setup("validate")
    assert third.cache_events == {"val": "loaded"}


def test_pairs_mark_the_second_text_with_token_type_ids(tmp_path: Path, tokenizer) -> None:
    rows = sst2_rows("train", 40)
    pairs = [(rows[i][0], rows[i + 1][0], rows[i][1]) for i in range(0, 40, 2)]
    path = write_tsv(tmp_path / "pairs.tsv", pairs, header=("sentence1", "sentence2", "label"))
    dm = TextDataModule(
        train_file=path, text_column="sentence1", text_pair_column="sentence2", quoting=False, batch_size=4
    )
    batch = next(iter(dm.train_dataloader()))
    for i, row in enumerate(batch["row"].tolist()):
        first, second, _ = pairs[row]
        n_first = len(tokenizer(first)["input_ids"])  # [CLS] first [SEP]
        n_second = len(tokenizer(second)["input_ids"]) - 1  # second [SEP]
        types = batch["token_type_ids"][i]
        assert types[:n_first].eq(0).all()
        assert types[n_first : n_first + n_second].eq(1).all()
        assert int(types.sum()) == n_second


def test_truncated_examples_are_counted(sst2: dict[str, str], tokenizer) -> None:
    dm = make(sst2, max_length=8)
    dm.setup("fit")
    texts = [t for t, _ in sst2_rows("train", 300)]
    expected = sum(len(tokenizer(t)["input_ids"]) > 8 for t in texts)
    assert 0 < expected < 300
    assert dm.truncated["train"] == expected
    assert max(batch["input_ids"].shape[1] for batch in dm.train_dataloader()) == 8
    reloaded = make(sst2, max_length=8)
    reloaded.setup("fit")
    assert reloaded.truncated["train"] == expected
    assert reloaded.cache_events["train"] == "loaded"


def test_regression_labels_are_floats(tmp_path: Path) -> None:
    rows = [(t, f"{i % 50 / 10:.1f}") for i, (t, _) in enumerate(sst2_rows("train", 30))]
    dm = TextDataModule(train_file=write_tsv(tmp_path / "r.tsv", rows), task="regression", quoting=False)
    assert dm.num_labels == 1
    assert dm.label_names == []
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].shape == batch["row"].shape
    expected = torch.tensor([float(rows[r][1]) for r in batch["row"].tolist()])
    torch.testing.assert_close(batch["labels"], expected)


@pytest.mark.parametrize("style", ["delimiter", "json_csv", "json_jsonl"])
def test_multilabel_labels_are_multi_hot(tmp_path: Path, style: str) -> None:
    texts = [t for t, _ in sst2_rows("train", 12)]
    sets = [["funny", "sad"], ["sad"], [], ["boring", "funny"]] * 3
    if style == "delimiter":
        path = write_tsv(tmp_path / "m.tsv", [(t, "|".join(s)) for t, s in zip(texts, sets, strict=True)])
        dm = TextDataModule(train_file=path, task="multilabel", label_delimiter="|", quoting=False)
    elif style == "json_csv":
        pd.DataFrame({"sentence": texts, "label": [json.dumps(s) for s in sets]}).to_csv(
            tmp_path / "m.csv", index=False
        )
        dm = TextDataModule(train_file=str(tmp_path / "m.csv"), task="multilabel")
    else:
        lines = [json.dumps({"sentence": t, "label": s}) for t, s in zip(texts, sets, strict=True)]
        (tmp_path / "m.jsonl").write_text("\n".join(lines))
        dm = TextDataModule(train_file=str(tmp_path / "m.jsonl"), task="multilabel")
    assert dm.label_names == ["boring", "funny", "sad"]
    assert dm.num_labels == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].shape == (len(batch["row"]), 3)
    for hot, row in zip(batch["labels"].tolist(), batch["row"].tolist(), strict=True):
        assert hot == [float(name in sets[row]) for name in dm.label_names]


def test_other_formats_and_headerless_files(tmp_path: Path) -> None:
    rows = sst2_rows("dev", 20)
    frame = pd.DataFrame({"text": [t for t, _ in rows], "y": [int(y) for _, y in rows]})
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    (tmp_path / "d.txt").write_text("\n".join(f"{y}\t{t}" for t, y in rows))  # STS-B style: no header
    for path, extra in [
        ("d.parquet", {}),
        ("d.jsonl", {}),
        ("d.txt", {"file_format": "tsv", "header": False, "column_names": ["y", "text"], "quoting": False}),
    ]:
        dm = TextDataModule(train_file=str(tmp_path / path), text_column="text", label_column="y", **extra)
        assert dm.label_names == ["0", "1"], path
        assert len(dm.raw_split("train")) == 20
        assert sum(len(b["row"]) for b in dm.train_dataloader()) == 20


def test_text_that_looks_like_missing_values_stays_text(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "t.tsv", [("NA", "0"), ("null", "1"), ("nan", "0"), ("None", "1")])
    dm = TextDataModule(train_file=path, quoting=False)
    assert dm.raw_split("train")["sentence"].tolist() == ["NA", "null", "nan", "None"]
    assert sum(len(b["row"]) for b in dm.train_dataloader()) == 4


def test_raw_split_gives_the_predict_texts_by_row(tmp_path: Path) -> None:
    rows = [*sst2_rows("test", 9), ("a label never seen in training", "7")]
    path = write_tsv(tmp_path / "p.tsv", rows)  # predict ignores labels, so an unknown one is no error
    dm = TextDataModule(predict_file=path, quoting=False, label_names=["0", "1"])
    assert dm.raw_split("predict")["sentence"].tolist() == [t for t, _ in rows]
    batches = list(dm.predict_dataloader())
    assert "labels" not in batches[0]
    assert sorted(r for b in batches for r in b["row"].tolist()) == list(range(10))


def test_label_names_travel_in_the_checkpoint_state(sst2: dict[str, str]) -> None:
    state = make(sst2).state_dict()
    assert state["label_names"] == ["0", "1"]
    dm = TextDataModule(test_file=sst2["test_file"], quoting=False)  # no train_file: as when testing a checkpoint
    with pytest.raises(DataError, match="label_names"):
        dm.num_labels  # noqa: B018
    dm.load_state_dict(state)
    assert dm.num_labels == 2
    assert next(iter(dm.test_dataloader()))["labels"].dtype == torch.long
    with pytest.raises(DataError, match="checkpoint was trained with labels"):
        make(sst2).load_state_dict({"label_names": ["neg", "pos"]})


# ----- samplers ---------------------------------------------------------------------------------------------------


def lengths(n: int = 1000) -> list[int]:
    return torch.randint(1, 120, (n,), generator=torch.Generator().manual_seed(1)).tolist()


def test_length_grouped_sampler_covers_every_index_once_with_similar_lengths() -> None:
    lens = lengths()
    sampler = LengthGroupedBatchSampler(lens, 16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lens[i] for i in b) - min(lens[i] for i in b) for b in batches) / len(batches)
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [shuffled[i : i + 16] for i in range(0, 1000, 16)]
    random_spread = sum(max(lens[i] for i in b) - min(lens[i] for i in b) for b in random_batches) / 63
    assert spread < random_spread / 4


def test_length_grouped_sampler_reshuffles_each_epoch_deterministically() -> None:
    sampler = LengthGroupedBatchSampler(lengths(), 16, seed=3)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert sorted(map(sorted, second)) != sorted(map(sorted, first))
    assert list(LengthGroupedBatchSampler(lengths(), 16, seed=4)) != first


@pytest.mark.parametrize(("n", "drop_last"), [(960, False), (1000, False), (1000, True)])
def test_length_grouped_sampler_shards_batches_across_ranks(n: int, drop_last: bool) -> None:
    lens = lengths(n)
    ranks = [LengthGroupedBatchSampler(lens, 16, num_replicas=2, rank=r, drop_last=drop_last) for r in (0, 1)]
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(ranks[1])
    seen = [i for share in shares for b in share for i in b]
    if n == 960:  # 60 batches split evenly: disjoint, and together exactly the data set
        assert sorted(seen) == list(range(n))
    elif drop_last:
        assert len(seen) == len(set(seen))
        assert all(len(b) == 16 for share in shares for b in share)
    else:  # 31 full global batches of 32 and one of 8, split 4 + 4: every index exactly once
        assert sorted(seen) == list(range(n))


def test_ddp_shares_are_the_single_process_batches_split() -> None:
    """Step k of 2 ranks x 8 sees exactly the examples of step k of 1 process x 16: DDP matches one device."""
    lens = lengths(1000)
    single = list(LengthGroupedBatchSampler(lens, 16, seed=5))
    ranks = [list(LengthGroupedBatchSampler(lens, 8, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for k, batch in enumerate(single):
        assert ranks[0][k] + ranks[1][k] == batch
        if len(batch) == 16:
            assert len(ranks[0][k]) == len(ranks[1][k]) == 8


def test_length_sorted_sampler_is_deterministic_and_shards() -> None:
    lens = lengths(101)
    single = list(LengthSortedSampler(lens))
    assert single == list(LengthSortedSampler(lens))
    assert sorted(single) == list(range(101))
    assert [lens[i] for i in single] == sorted(lens, reverse=True)
    shares = [list(LengthSortedSampler(lens, num_replicas=2, rank=r)) for r in (0, 1)]
    assert (len(shares[0]), len(shares[1])) == (51, 50)  # no repeats: each example is evaluated exactly once
    assert sorted(shares[0] + shares[1]) == list(range(101))
    with pytest.raises(ValueError, match="cannot be shared"):
        LengthSortedSampler([3], num_replicas=2, rank=0)


class _Bag(L.LightningModule):
    """The smallest model that consumes the batches."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(30522, 2)
        self.epochs: list[list[int]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self.epochs.append(batch["row"].tolist())
        return nn.functional.cross_entropy(self.emb(batch["input_ids"]), batch["labels"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.cross_entropy(self.emb(batch["input_ids"]), batch["labels"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_reshuffles_between_epochs(sst2: dict[str, str], tmp_path: Path) -> None:
    dm, model = make(sst2, batch_size=8), _Bag()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.epochs) == 2
    assert model.epochs[0] != model.epochs[1]
    assert dm.cache_events == {"train": "loaded", "val": "loaded"}  # built in prepare_data, loaded in setup


def test_a_limited_evaluation_draws_a_fixed_random_sample_not_the_longest_texts(sst2: dict[str, str]) -> None:
    """`limit_val_batches` keeps the first batches: they hold a seeded random sample, the same rows every time."""
    dm = make(sst2, batch_size=8)  # 80 dev sentences, 10 batches
    dm.prepare_data()
    dm.setup("fit")
    lengths = dm.splits["val"].lengths

    def first_rows(limit: int | float, split: str = "val") -> list[int]:
        dm.trainer = SimpleNamespace(limit_val_batches=limit, limit_test_batches=limit)
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        kept = limit if isinstance(limit, int) else int(len(loader) * limit)
        assert len(loader) == (10 if split == "val" else 5)  # the length Lightning counts its limit on is unchanged
        return [int(row) for batch in list(loader)[:kept] for row in batch["row"]]

    rows = first_rows(2)
    assert len(set(rows)) == len(rows) == 16
    assert rows == first_rows(2)  # the same rows in every run
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:16]
    assert sorted(rows) != sorted(longest)  # what the old length order evaluated
    mean = sum(lengths[i] for i in rows) / 16
    assert mean < sum(lengths[i] for i in longest) / 16  # a sample is shorter on average than the longest texts
    assert [lengths[i] for i in rows] == sorted((lengths[i] for i in rows), reverse=True)  # still padded little
    assert set(first_rows(0.5)) >= set(rows)  # a larger limit extends the same draw
    assert len(first_rows(0.5, "test")) == 16  # int(5 batches * 0.5) = 2 batches of 8
    for limit in (1.0, 10, 200):  # every batch: the plain length order, nothing drawn
        assert first_rows(limit) == sorted(range(80), key=lambda i: -lengths[i])


def test_a_limited_evaluation_shares_one_sample_among_ranks() -> None:
    """Under DDP every rank takes its part of the same sample first; nothing is repeated or lost."""
    lengths = [(7 * i) % 23 + 1 for i in range(50)]
    alone = LengthSortedSampler(lengths, num_replicas=1, rank=0, sample=20)
    ranks = [LengthSortedSampler(lengths, num_replicas=2, rank=r, sample=20) for r in (0, 1)]
    assert sorted(list(ranks[0])[: ranks[0].sampled] + list(ranks[1])[: ranks[1].sampled]) == sorted(
        list(alone)[: alone.sampled]
    )
    assert sorted(list(ranks[0]) + list(ranks[1])) == list(range(50))
    assert {r.sampled for r in ranks} == {10}


# ----- bad input --------------------------------------------------------------------------------------------------


def bad(tmp_path: Path, content: str | bytes, name: str = "bad.tsv") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.tsv does not exist"):
        TextDataModule(train_file=str(tmp_path / "nope.tsv")).num_labels  # noqa: B018
    with pytest.raises(DataError, match=r"bad\.tsv is empty"):
        TextDataModule(train_file=bad(tmp_path, "")).num_labels  # noqa: B018
    with pytest.raises(DataError, match=r"bad\.tsv has no data rows"):
        TextDataModule(train_file=bad(tmp_path, "sentence\tlabel\n")).num_labels  # noqa: B018


def test_file_that_is_not_utf8_names_line_and_encoding_option(tmp_path: Path) -> None:
    path = bad(tmp_path, b"sentence\tlabel\na fine film\t1\nun caf\xe9 froid\t0\n")
    with pytest.raises(DataError, match=r"bad\.tsv is not valid utf-8: line 3.*`encoding`"):
        TextDataModule(train_file=path).num_labels  # noqa: B018
    assert TextDataModule(train_file=path, encoding="latin-1").raw_split("train")["sentence"][1] == "un café froid"


def test_ragged_row_names_its_line(tmp_path: Path) -> None:
    path = bad(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\nextra\tfield\t1\n")
    with pytest.raises(DataError, match=r"bad\.tsv, line 4: expected 2 fields .* found 3"):
        TextDataModule(train_file=path).num_labels  # noqa: B018


def test_quote_in_text_points_at_the_quoting_option(tmp_path: Path) -> None:
    path = bad(tmp_path, 'sentence\tlabel\n" a movie about nothing\t0\nfun\t1\nbetter "than" most\t1\n')
    with pytest.raises(DataError, match=r"bad\.tsv, line 2 \(the record runs on to line 4\).*quoting: false"):
        TextDataModule(train_file=path).num_labels  # noqa: B018
    assert TextDataModule(train_file=path, quoting=False).raw_split("train")["sentence"][0] == '" a movie about nothing'


def test_missing_columns_list_the_columns_there_are(tmp_path: Path) -> None:
    path = bad(tmp_path, "text\ty\nhello\t1\n")
    with pytest.raises(DataError, match=r"bad\.tsv has no column 'label'.*'text', 'y'"):
        TextDataModule(train_file=path, text_column="text").num_labels  # noqa: B018
    with pytest.raises(DataError, match=r"bad\.tsv has no column 'sentence' \(the text column\).*'text', 'y'"):
        TextDataModule(train_file=path, label_column="y").setup("fit")


def test_empty_text_is_an_error_or_skipped(tmp_path: Path) -> None:
    rows = sst2_rows("train", 5)
    path = bad(
        tmp_path, "sentence\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in rows[:2]) + "\n  \t1\n" + rows[2][0] + "\t0\n"
    )
    with pytest.raises(DataError, match=r"bad\.tsv, line 4: the text in column 'sentence' is empty.*skip_empty_text"):
        TextDataModule(train_file=path, quoting=False).setup("fit")
    dm = TextDataModule(train_file=path, quoting=False, skip_empty_text=True)
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        dm.setup("fit")
    assert dm.skipped["train"] == 1
    assert sorted(r for b in dm.train_dataloader() for r in b["row"].tolist()) == [0, 1, 3]  # rows keep their place


def test_label_unseen_in_training_names_label_row_and_known_labels(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "t.tsv", sst2_rows("train", 20))
    val = write_tsv(tmp_path / "v.tsv", [*sst2_rows("dev", 3), ("a so-so film", "2")])
    dm = TextDataModule(train_file=train, val_file=val, quoting=False)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"v\.tsv, line 5: label '2' never appears.*\['0', '1'\]"):
        dm.val_dataloader()


def test_one_class_training_warns(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "t.tsv", [(t, "1") for t, _ in sst2_rows("train", 10)])
    with pytest.warns(UserWarning, match="has the label"):
        assert TextDataModule(train_file=path, quoting=False).num_labels == 1


def test_label_names_that_disagree_with_the_data(sst2: dict[str, str]) -> None:
    with pytest.raises(DataError, match=r"labels \['1'\] that are not in `label_names` \['0', 'x'\]"):
        make(sst2, label_names=["0", "x"]).num_labels  # noqa: B018
    assert make(sst2, label_names=["1", "0"]).label_names == ["1", "0"]  # a fixed order is kept


def test_bad_labels_for_regression_and_multilabel(tmp_path: Path) -> None:
    path = bad(tmp_path, "sentence\tlabel\ngood\t0.5\nbad\tlots\n")
    with pytest.raises(DataError, match=r"bad\.tsv, line 3: label 'lots' .* not a finite number"):
        TextDataModule(train_file=path, task="regression").setup("fit")
    path = bad(tmp_path, "sentence\tlabel\ngood\ta,b\n", name="m.tsv")
    with pytest.raises(DataError, match=r"m\.tsv, line 2: .*not a JSON list.*label_delimiter"):
        TextDataModule(train_file=path, task="multilabel").num_labels  # noqa: B018


def test_bad_jsonl_line(tmp_path: Path) -> None:
    path = bad(tmp_path, '{"sentence": "ok", "label": 1}\n{"sentence": "broken"\n', name="b.jsonl")
    with pytest.raises(DataError, match=r"b\.jsonl, line 2: not valid JSON"):
        TextDataModule(train_file=path).num_labels  # noqa: B018


def test_a_limited_evaluation_draws_whole_texts_when_long_texts_are_windowed() -> None:
    """Every window of a drawn text is in the sample, so the model can merge them into the text's prediction."""
    groups = [i // 3 for i in range(30)]  # 10 texts of 3 windows each
    sampler = LengthSortedSampler([5] * 30, groups=groups, sample=7)
    drawn = list(sampler)[: sampler.sampled]
    assert sampler.sampled == 9  # whole texts: 3 of them, the first draw past 7 windows
    assert all(sum(groups[i] == groups[j] for j in drawn) == 3 for i in drawn)
