"""``TextDataModule``: local text files in, padded batches with Hugging Face keys out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import pandas as pd
import tokenizers
import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from bertft.data.cache import SplitCache, cache_key, default_cache_dir, quiet_datasets, sha256_bytes
from bertft.data.encode import (
    LABELS,
    LENGTH,
    LINE,
    ROW,
    UNKNOWN_WARN_FRACTION,
    WINDOW,
    Collator,
    EncodeSettings,
    encode_table,
    load_tokenizer,
    tokenizer_fingerprint,
    unknown_fraction,
)
from bertft.data.files import DataError, ReadOptions, Table, read_bytes, read_table
from bertft.data.labels import TASKS, Task, check_known, parse_labels, training_vocabulary, vocabulary
from bertft.data.sampler import LengthGroupedBatchSampler, LengthSortedSampler, ResumableDataLoader, check_sharding
from bertft.data.split import HeldOut, check_val_fraction, describe, hold_out

Split = Literal["train", "val", "test", "predict"]
_STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
}


class TextDataModule(L.LightningDataModule):
    """Text classification, multi-label classification or regression data from local files.

    Each split is read, validated, tokenised once and cached on disk; batches are padded to their longest example.
    Under DDP set ``Trainer(use_distributed_sampler=False)``: the training batch sampler shards batches across ranks
    itself, and Lightning cannot inject its ``DistributedSampler`` into a length-grouped batch sampler.

    Args:
        train_file: Training data (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``, or a ``bundled://`` path).
        val_file: Validation data.
        test_file: Test data.
        predict_file: Data to predict; labels are not needed.
        text_column: Column holding the text.
        text_pair_column: Column holding a second text (pair tasks such as similarity or entailment).
        label_column: Column holding the label.
        task: ``classification`` (one class per row), ``multilabel`` (any number of classes per row) or
            ``regression`` (a number per row).
        label_delimiter: Multilabel only: the character between labels in one cell; ``None`` means a JSON list.
        label_names: Fixed class vocabulary and order; by default the sorted classes of the training file.
        file_format: ``auto`` takes it from the extension.
        delimiter: Field separator; default ``,`` for CSV and a tab for TSV.
        quoting: Whether fields may be quoted with ``"``. Turn off for files like SST-2 whose text contains ``"``.
        header: Whether the first row names the columns.
        column_names: Names for the columns of a file without a header (replaces the header when there is one).
        encoding: Text encoding of the files.
        extra_fields: CSV/TSV rows with more fields than there are columns: ``error`` (the default) or ``ignore``
            (drop the extra trailing fields; STS-B's files carry two extra source fields on about 500 lines).
        tokenizer: Encoder name or folder whose tokenizer to use (the CLI links it to ``model.encoder``).
        max_length: Longest sequence in tokens, special tokens included; longer examples are truncated, or cut into
            windows (``long_texts``).
        batch_size: Training batch size (per device).
        eval_batch_size: Validation/test/predict batch size; default ``batch_size``.
        group_by_length: Batch training examples of similar length together to waste less compute on padding.
        num_workers: DataLoader worker processes.
        cache_dir: Folder for tokenised splits; default ``$BERTFT_CACHE`` or ``~/.cache/bertft``.
        skip_empty_text: Skip rows whose text is empty instead of raising an error.
        seed: Seed of the training order (combined with the epoch number) and of the ``val_fraction`` draw.
        val_fraction: Without a ``val_file``: hold out this share of the training file's rows (e.g. ``0.1``), or this
            many rows (a whole number such as ``1000``), for validation. Stratified by class for ``classification``,
            at random for the other tasks; the same rows for a given file, fraction and ``seed`` (checkpoints record
            them, and a resumed run checks it holds out the same).
        long_texts: What to do with a text longer than ``max_length``: ``truncate`` it, or cut it into overlapping
            ``windows`` (single texts only). Training learns from every window with the text's label; validation,
            test and predict merge a text's windows back into one prediction (``model.window_pooling``), so metrics
            count texts.
        stride: With ``long_texts: windows``: tokens shared by consecutive windows.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "sentence",
        text_pair_column: str | None = None,
        label_column: str = "label",
        task: Literal["classification", "multilabel", "regression"] = "classification",
        label_delimiter: str | None = None,
        label_names: list[str] | None = None,
        file_format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto",
        delimiter: str | None = None,
        quoting: bool = True,
        header: bool = True,
        column_names: list[str] | None = None,
        encoding: str = "utf-8",
        extra_fields: Literal["error", "ignore"] = "error",
        tokenizer: str = "minilm",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        group_by_length: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        skip_empty_text: bool = False,
        seed: int = 0,
        val_fraction: int | float | None = None,
        long_texts: Literal["truncate", "windows"] = "truncate",
        stride: int = 32,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if max_length < 2 or batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"max_length must be >= 2 and batch sizes >= 1, got {max_length}, {batch_size}")
        check_val_fraction(val_fraction, val_file)
        if long_texts not in ("truncate", "windows"):
            raise ValueError(f"data.long_texts={long_texts!r}: choose 'truncate' or 'windows'")
        if long_texts == "windows" and text_pair_column is not None:
            raise ValueError(
                "data.long_texts: windows cuts single texts; with a text_pair_column the pair is truncated instead. "
                "Remove one of the two settings."
            )
        # A window holds max_length tokens with [CLS] and [SEP] among them: what follows must advance past stride.
        if long_texts == "windows" and not 0 <= stride < max_length - 2:
            raise ValueError(
                f"data.stride={stride} must be at least 0 and smaller than data.max_length={max_length} minus 2 (the "
                f"[CLS] and [SEP] of each window), or windows would not advance: lower stride, e.g. to "
                f"{max(0, max_length // 4)}."
            )
        # label_names stay out: the model logs the resolved vocabulary, and Lightning refuses two differing values.
        self.save_hyperparameters(ignore=["label_names"])
        files = (train_file, val_file, test_file, predict_file)
        self.files: dict[Split, str | None] = dict(zip(("train", "val", "test", "predict"), files, strict=True))
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task: Task = task
        self.label_delimiter = label_delimiter
        self.read_options = ReadOptions(
            file_format=file_format,
            delimiter=delimiter,
            quoting=quoting,
            header=header,
            column_names=tuple(column_names) if column_names else None,
            encoding=encoding,
            extra_fields=extra_fields,
        )
        self.tokenizer_name = tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.group_by_length, self.num_workers, self.seed = group_by_length, num_workers, seed
        self.skip_empty_text = skip_empty_text
        self.val_fraction = val_fraction
        self.long_texts, self.stride = long_texts, stride
        self._held_out: HeldOut | None = None
        self._full_train: Dataset | None = None  # the whole encoded training file, when val_fraction splits it
        self._digests: dict[str, str] = {}  # file path -> sha256 of the bytes its split was encoded from
        self.cache = SplitCache(cache_dir or default_cache_dir())
        self._label_names: list[str] | None = [str(n) for n in label_names] if label_names else None
        self._label_names_given = bool(label_names)
        self._labels_checked = False  # hand-written label_names not yet compared with the training file
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._fingerprint: str | None = None
        self.datasets: dict[Split, Dataset] = {}
        self._lengths: dict[Split, list[int]] = {}
        self._known_labels_checked: set[Split] = set()
        self._units: dict[Split, str] = {}  # what error messages count in each split's file: "line" or "row"
        #: What happened to each split's cache in this process: ``"built"`` or ``"loaded"`` (tests and logs read it).
        self.cache_events: dict[Split, str] = {}
        self._unsaved_classes: tuple[str, list[str]] | None = None  # (key, classes) learnt but not yet cached
        #: Per split: how many examples were truncated to ``max_length`` and how many empty rows were skipped.
        self.truncated: dict[Split, int] = {}
        self.skipped: dict[Split, int] = {}
        #: Per split: the share of its text tokens that the tokenizer maps to its unknown token.
        self.unknown_fraction: dict[Split, float] = {}

    # ----- labels -------------------------------------------------------------------------------------------------

    @property
    def text_columns(self) -> list[str]:
        """The input text column(s), in order."""
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])

    @property
    def label_names(self) -> list[str]:
        """The class vocabulary, in output order; ``[]`` for regression. Reads the training labels on first use."""
        if self.task == "regression":
            return []
        train = self.files["train"]
        if self._label_names is not None and (self._labels_checked or train is None):
            return self._label_names
        if train is None:
            raise DataError(
                "the label vocabulary is unknown: there is no `train_file` to read it from. Give `label_names` (the "
                "run's config.yaml and checkpoint record them), or a `train_file`."
            )
        self._label_names = self._vocabulary(train)
        self._labels_checked = True
        return self._label_names

    def _vocabulary(self, train: str) -> list[str]:
        """The training file's label vocabulary (checked against a hand-written ``label_names``).

        The file's own classes are cached, keyed by its contents and how it is read, so that a run whose tokenised
        splits are cached does not read and parse the whole training file again only to learn them.
        """
        data = read_bytes(train)
        how = {"column": self.label_column, "task": self.task, "delimiter": self.label_delimiter}
        key = cache_key({"file": sha256_bytes(data), "read": asdict(self.read_options), "labels": how})
        classes = self.cache.load_json("label-classes", key)
        if classes is None:
            labels = parse_labels(self._read(train, data), self.label_column, self.task, self.label_delimiter)
            classes = vocabulary(labels, self.task)
            # Stored with the tokenised splits (at once if they are in use already), so that a run its checks
            # refuse leaves no cache folder behind.
            self._unsaved_classes = key, classes
            if self.cache_events:
                self._save_classes()
        return training_vocabulary(classes, train, self.task, self._label_names)

    @property
    def num_labels(self) -> int:
        """Output size the model needs: the number of classes, or 1 for regression. Valid right after ``__init__``."""
        return 1 if self.task == "regression" else len(self.label_names)

    def state_dict(self) -> dict[str, Any]:
        """What checkpoints carry: the labels, and the held-out validation rows' count and hash.

        The labels let a model test or predict without its training file; the hash lets a resumed run check that
        ``val_fraction`` holds out the same rows.
        """
        resolvable = self._label_names is not None or self.files["train"] is not None
        state: dict[str, Any] = {"label_names": self.label_names if resolvable else [], "task": self.task}
        if self._held_out is not None:
            held = self._held_out
            state["val_split"] = {"val_fraction": self.val_fraction, "seed": self.seed, "rows": len(held.rows),
                                  "digest": held.digest}  # fmt: skip
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the label vocabulary from a checkpoint."""
        names = list(state_dict.get("label_names", []))
        self._check_val_split(state_dict.get("val_split"))
        if self.task == "regression" or not names:
            return
        known = self._label_names is not None or self.files["train"] is not None
        if known and self.label_names != names:
            raise DataError(
                f"the checkpoint was trained with labels {names}, but this data module has {self.label_names}. "
                "Use the same label_names (and order) as the checkpoint, or the same training file."
            )
        self._label_names, self._labels_checked = names, True

    def _check_val_split(self, saved: dict[str, Any] | None) -> None:
        # Lightning restores the data module after setup, so the split is already drawn: compare, do not replace.
        if saved is None or self._held_out is None or saved["digest"] == self._held_out.digest:
            return
        raise DataError(
            f"the checkpoint was trained holding out {saved['rows']} validation rows (val_fraction="
            f"{saved['val_fraction']}, seed={saved['seed']}), but this run holds out {len(self._held_out.rows)} other "
            f"rows (val_fraction={self.val_fraction}, seed={self.seed}): resume with the checkpoint's train_file, "
            "val_fraction and seed (its config.yaml has them)."
        )

    @property
    def has_val(self) -> bool:
        """Whether there is validation data: a ``val_file``, or rows held out by ``val_fraction``."""
        return self.files["val"] is not None or (self.val_fraction is not None and self.files["train"] is not None)

    @property
    def windowed(self) -> bool:
        """Whether long texts are cut into windows (``long_texts: windows``)."""
        return self.long_texts == "windows"

    def label_counts(self) -> list[int]:
        """Training examples per class, in ``label_names`` order (per label for multilabel).

        What ``balanced`` class weights are computed from. Windows of a long text count once each, as the loss sees
        them.
        """
        if self.task == "regression":
            raise DataError("regression has no classes to count")
        index = {name: i for i, name in enumerate(self.label_names)}
        counts = [0] * len(index)
        for label in _column(self._ensure("train"), LABELS):
            for name in label if isinstance(label, list) else [label]:
                counts[index[name]] += 1
        return counts

    def num_train_examples(self) -> int:
        """Examples in the training split (windows count one each)."""
        return self._ensure("train").num_rows

    # ----- reading and caching ------------------------------------------------------------------------------------

    def _read(self, path: str, data: bytes | None = None) -> Table:
        return read_table(path, self.read_options, data)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The loaded tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def _tokenizer_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tokenizer_fingerprint(self.tokenizer)
        return self._fingerprint

    def raw_split(self, split: Split) -> pd.DataFrame:
        """The split's file as read, every original column, indexed by ``row`` (what batches carry)."""
        path = self._path(split)
        return self._read(path).frame

    def _path(self, split: Split) -> str:
        if split == "val" and self.files["val"] is None and self.val_fraction is not None:
            split = "train"  # held-out rows of the training file
        path = self.files[split]
        if path is None:
            raise DataError(f"no {split}_file was given, so the {split} split cannot be used. Set `{split}_file`.")
        return path

    def _splits(self, stage: str | None) -> tuple[Split, ...]:
        wanted = _STAGE_SPLITS.get(stage or "", ("train", "val", "test", "predict"))
        return tuple(s for s in wanted if self.files[s] is not None or (s == "val" and self.has_val))

    def prepare_data(self) -> None:
        """Tokenises and caches the splits the current trainer stage needs (Lightning runs this on one process)."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        for split in self._splits(str(stage.value) if stage is not None else None):
            # Labels checked here, before Lightning creates the loggers' folders and saves the config: a run that
            # stops on a label unseen in training leaves no half-made run behind.
            self._check_known_labels(split, self._load_or_build(split))

    def setup(self, stage: str | None = None) -> None:
        """Loads the stage's splits from the cache, building any that ``prepare_data`` did not."""
        for split in self._splits(stage):
            self._ensure(split)

    def _ensure(self, split: Split) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self._load_or_build(split)
            self._lengths[split] = _column(self.datasets[split], LENGTH)
        return self.datasets[split]

    def _load_or_build(self, split: Split) -> Dataset:
        if self.val_fraction is None or split not in ("train", "val"):
            return self._load_or_build_file(split)
        if self._full_train is None:
            self._full_train = self._load_or_build_file("train")
        full = self._full_train
        held = set(self._hold_out(full).rows)
        keep = [i for i, row in enumerate(_column(full, ROW)) if (row in held) == (split == "val")]
        for facts in (self.truncated, self.skipped, self._units, self.cache_events):
            if "train" in facts:
                facts.setdefault(split, facts["train"])  # type: ignore[index]
        # keep_in_memory: a new file inside the cache entry's folder would break its recorded hashes.
        with quiet_datasets():
            return full.select(keep, keep_in_memory=True).flatten_indices(keep_in_memory=True)

    def _hold_out(self, full: Dataset) -> HeldOut:
        """The training rows held out for validation: computed once per process, cached on disk by file and setting."""
        if self._held_out is not None:
            return self._held_out
        path = self._path("train")
        stratify = self.task == "classification"
        how = {
            "file": self._digests[path],  # the bytes `full` was encoded from, hashed when it was loaded
            "read": asdict(self.read_options),
            "skip": self.skip_empty_text,
            "label": self.label_column,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "stratify": stratify,
        }
        key = cache_key(how)
        saved = self.cache.load_json("val-split", key)
        if saved is not None:
            held = HeldOut(tuple(saved["rows"]), saved["total"], saved["stratified"])
        else:
            labels = _column(full, LABELS) if stratify else None
            held = hold_out(_column(full, ROW), labels, self.val_fraction, self.seed, stratify, path)
            self.cache.save_json("val-split", key, {"rows": list(held.rows), "total": held.total,
                                                    "stratified": held.stratified})  # fmt: skip
        self._held_out = held
        rank_zero_info(describe(held, self.val_fraction, path))
        self._check_training_classes(full, set(held.rows), path)
        return held

    def _check_training_classes(self, full: Dataset, held: set[int], path: str) -> None:
        """Refuses a split that leaves a class without a training row, unless ``label_names`` lists them by hand."""
        if self.task == "regression":
            return
        seen: set[str] = set()
        for row, label in zip(_column(full, ROW), _column(full, LABELS), strict=True):
            if row not in held:
                seen.update(label if isinstance(label, list) else [label])
        missing = [name for name in self.label_names if name not in seen]
        if not missing:
            return
        message = (
            f"after holding out data.val_fraction={self.val_fraction} of {path} for validation, class(es) {missing} "
            "have no training row left"
        )
        if not self._label_names_given:
            raise DataError(
                f"{message}: the model could never learn them. Use a larger training share (a smaller val_fraction), "
                "add rows of those classes, give a val_file, or list every class in data.label_names to train "
                "without them."
            )
        rank_zero_warn(f"{message}; they stay in data.label_names but the model will not learn them.")

    def _load_or_build_file(self, split: Split) -> Dataset:
        path = self._path(split)
        data = read_bytes(path)
        settings = self._encode_settings(split)
        self._digests[path] = sha256_bytes(data)
        parts = {"file": self._digests[path], "read": asdict(self.read_options), "encode": asdict(settings)}
        key = cache_key({**parts, "tokenizer": self._tokenizer_fingerprint(), "tokenizers": tokenizers.__version__})
        dataset, meta, self.cache_events[split] = self.cache.get_or_build(
            split, key, lambda: self._encode(self._read(path, data), settings)
        )
        self._save_classes()
        if split not in self.truncated:  # report once per split and process
            self.truncated[split], self.skipped[split] = meta["truncated"], meta["skipped"]
            self._units[split] = meta["unit"]
            rank_zero_info(
                f"{split} ({path}): {dataset.num_rows} examples, {meta['truncated']} "
                + (f"longer than {self.max_length} tokens cut into windows" if self.windowed else
                   f"truncated to {self.max_length} tokens")
                + f", {meta['skipped']} empty texts skipped; cache {self.cache_events[split]}"
            )  # fmt: skip
            self._warn_unknown_tokens(split, path, dataset)
        return dataset

    def _warn_unknown_tokens(self, split: Split, path: str, dataset: Dataset) -> None:
        """Warns when the encoder's vocabulary cannot represent much of a split (Chinese text under an English one)."""
        fraction = unknown_fraction(dataset, self.tokenizer)
        self.unknown_fraction[split] = fraction
        if fraction > UNKNOWN_WARN_FRACTION:
            rank_zero_warn(
                f"{split} ({path}): {fraction:.0%} of its tokens are unknown to the tokenizer of "
                f"{self.tokenizer_name!r}: they all become {self.tokenizer.unk_token}, so the model cannot read them. "
                "Its vocabulary does not cover the language or script of this text: choose an encoder whose "
                "vocabulary does (for Chinese, a Chinese or multilingual checkpoint such as bert-base-chinese or "
                "xlm-roberta-base)."
            )

    def _save_classes(self) -> None:
        if self._unsaved_classes is not None:
            self.cache.save_json("label-classes", *self._unsaved_classes)
            self._unsaved_classes = None

    def _encode_settings(self, split: Split) -> Any:
        """A frozen dataclass of everything besides the file and tokenizer that decides the split's encoding."""
        return EncodeSettings(
            tuple(self.text_columns),
            self.label_column if split != "predict" else None,  # predictions need no labels; a file may have them
            self.task,
            self.label_delimiter,
            self.max_length,
            self.skip_empty_text,
            self.stride if self.windowed else None,
        )

    def _encode(self, table: Table, settings: Any) -> tuple[Dataset, dict[str, Any]]:
        """Tokenises a split (see :func:`~bertft.data.encode.encode_table`); subclasses encode other layouts."""
        return encode_table(table, self.tokenizer, settings)

    # ----- loaders ------------------------------------------------------------------------------------------------

    def _dataset(self, split: Split) -> Dataset:
        dataset = self._ensure(split)  # also serves Python API use that never called setup
        self._check_known_labels(split, dataset)
        keep = [c for c in dataset.column_names if c not in (LINE, LENGTH)]
        return dataset.select_columns(keep)

    def _check_known_labels(self, split: Split, dataset: Dataset) -> None:
        if LABELS not in dataset.column_names or self.task == "regression" or split in self._known_labels_checked:
            return
        where = f"{self._path(split)}, {self._units.get(split, 'line')}"
        check_known(_column(dataset, LABELS), _column(dataset, LINE), self.label_names, where)
        self._known_labels_checked.add(split)

    def _collator(self) -> Collator:
        tok = self.tokenizer
        return Collator(tok.pad_token_id or 0, self.task, self.label_names, tok.padding_side)

    def _loader(self, dataset: Dataset, loader_class: type[DataLoader] = DataLoader, **kwargs: Any) -> DataLoader:
        return loader_class(
            dataset,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Each new iterator draws a seed from its loader's generator; with none it draws from the global RNG,
            # so validation would shift the dropout masks of the training steps after it, and a resumed run (whose
            # loaders start at other points) would not repeat the uninterrupted run's masks.
            generator=torch.Generator(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, length-grouped batches; each DDP rank gets its own equal share."""
        check_sharding(self.trainer)
        dataset = self._dataset("train")
        sampler = LengthGroupedBatchSampler(
            self._lengths["train"],
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            mega_batches=50 if self.group_by_length else 1,  # 1: sorting within a batch changes nothing
        )
        # Resumable: checkpoints record the position in the epoch, so a resumed run continues with the next batch.
        return self._loader(dataset, ResumableDataLoader, batch_sampler=sampler)

    def _eval_loader(self, split: Split) -> DataLoader:
        # Sorted by length for speed and deterministic; `row` in every batch restores the input order.
        dataset = self._dataset(split)
        # Every window of a text on one rank, where the model merges them into the text's prediction.
        groups = _column(dataset, ROW) if WINDOW in dataset.column_names else None
        sampler = LengthSortedSampler(self._lengths[split], groups=groups)
        loader = self._loader(dataset, sampler=sampler, batch_size=self.eval_batch_size)
        _warn_if_limited(self.trainer, split, len(loader))
        return loader

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches, sorted by length; none (validation skipped) without ``val_file`` or ``val_fraction``."""
        return self._eval_loader("val") if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        """Test batches, sorted by length."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches, sorted by length; ``row`` restores the file's order."""
        return self._eval_loader("predict")


def _warn_if_limited(trainer: L.Trainer | None, split: Split, batches: int) -> None:
    # Evaluation is sorted longest first, so `limit_val_batches: 30` is not a sample of the split but its 30 batches
    # of longest texts: a biased metric (a sweep's comparison on it included), which nothing else would reveal.
    limit = getattr(trainer, f"limit_{split}_batches", None) if split in ("val", "test") else None
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit == 0:
        return
    if (isinstance(limit, int) and limit < batches) or (isinstance(limit, float) and limit < 1.0):
        rank_zero_warn(
            f"trainer.limit_{split}_batches={limit}: {split} batches are sorted by length, longest first, so the"
            f" {split} metrics come from the longest texts only, not a sample of the split; for a representative"
            f" subset, give a smaller {split}_file{' or data.val_fraction' if split == 'val' else ''}"
        )


def _column(dataset: Dataset, name: str) -> list[Any]:
    # Straight from Arrow: indexing a Dataset by column name decodes row by row, 30x slower on 60k rows.
    return dataset.data.column(name).to_pylist()
