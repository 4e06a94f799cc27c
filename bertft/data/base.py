"""``EncodedDataModule``: what every bertft data module shares, from local files to length-sorted padded batches.

The splits and their files, the on-disk token cache, the validation split held out of the training file, the
samplers and loaders, and the label vocabulary with the checks on it live here, once. A subclass supplies what differs
between data layouts: how a file is read, encoded and collated, and how the label vocabulary is learnt from training
data (:class:`~bertft.data.TextDataModule` for texts, :class:`~bertft.data.TokenDataModule` for tagged words).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Any

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
    column,
    tokenizer_fingerprint,
    unknown_fraction,
)
from bertft.data.files import DataError, ReadOptions, Table, read_bytes
from bertft.data.labels import check_known
from bertft.data.sampler import (
    LengthGroupedBatchSampler,
    LengthSortedSampler,
    ResumableDataLoader,
    check_sharding,
    evaluated_examples,
)
from bertft.data.split import (
    SPLITS,
    STAGE_SPLITS,
    HeldOut,
    Split,
    SplitState,
    check_training_classes,
    check_val_fraction,
    describe,
    hold_out,
    known,
)


class EncodedDataModule(L.LightningDataModule, ABC):
    """Data from local files: each split read, checked, tokenised once, cached on disk and batched by length.

    The shared base of :class:`~bertft.data.TextDataModule` and :class:`~bertft.data.TokenDataModule`; choose one of
    them (``data.class_path``). Batches are padded to their longest example and carry Hugging Face keys.

    Under DDP set ``Trainer(use_distributed_sampler=False)``: the training batch sampler shards batches across ranks
    itself, and Lightning cannot inject its ``DistributedSampler`` into a length-grouped batch sampler.

    A subclass calls ``__init__`` with its settings, then ``self.save_hyperparameters(ignore=["label_names"])``: its
    own arguments, not this base's, are what the config and checkpoints record (``label_names`` stay out: the model
    logs the resolved vocabulary, and Lightning refuses two differing values).

    Args:
        train_file: Training data.
        val_file: Validation data.
        test_file: Test data.
        predict_file: Data to predict.
        task: The task the data serves (``classification``, ``multilabel``, ``regression``, ``token``).
        label_names: Fixed class vocabulary and order; by default the sorted classes of the training file.
        tokenizer: Encoder name or folder whose tokenizer to use.
        max_length: Longest sequence in tokens, special tokens included.
        batch_size: Training batch size (per device).
        eval_batch_size: Validation/test/predict batch size; default ``batch_size``.
        group_by_length: Batch training examples of similar length together.
        num_workers: DataLoader worker processes.
        cache_dir: Folder for tokenised splits; default ``$BERTFT_CACHE`` or ``~/.cache/bertft``.
        seed: Seed of the training order (combined with the epoch number) and of the ``val_fraction`` draw.
        val_fraction: Without a ``val_file``: the share (or number) of training rows held out for validation.
        read_options: How files are parsed (part of every cache key).
        label_column: The column holding the labels (part of the held-out split's cache key).
        skip_empty_text: Whether rows with an empty text are skipped (part of the held-out split's cache key).
    """

    task: str

    def __init__(
        self,
        *,
        train_file: str | None,
        val_file: str | None,
        test_file: str | None,
        predict_file: str | None,
        task: str,
        label_names: list[str] | None,
        tokenizer: str,
        max_length: int,
        batch_size: int,
        eval_batch_size: int | None,
        group_by_length: bool,
        num_workers: int,
        cache_dir: str | None,
        seed: int,
        val_fraction: int | float | None,
        read_options: ReadOptions,
        label_column: str,
        skip_empty_text: bool,
    ) -> None:
        super().__init__()
        if max_length < 2 or batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"max_length must be >= 2 and batch sizes >= 1, got {max_length}, {batch_size}")
        check_val_fraction(val_fraction, val_file)
        files = (train_file, val_file, test_file, predict_file)
        #: Everything known about each split, in one record per split.
        self.splits: dict[Split, SplitState] = {s: SplitState(f) for s, f in zip(SPLITS, files, strict=True)}
        self.task = task
        self.read_options, self.label_column, self.skip_empty_text = read_options, label_column, skip_empty_text
        self.tokenizer_name = tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.group_by_length, self.num_workers, self.seed = group_by_length, num_workers, seed
        self.val_fraction = val_fraction
        self.cache = SplitCache(cache_dir or default_cache_dir())
        self._held_out: HeldOut | None = None
        self._full_train: Dataset | None = None  # the whole encoded training file, when val_fraction splits it
        self._label_names: list[str] | None = [str(n) for n in label_names] if label_names else None
        self._label_names_given = bool(label_names)
        self._labels_checked = False  # hand-written label_names not yet compared with the training file
        self._unsaved_classes: tuple[str, list[str]] | None = None  # (key, classes) learnt but not yet cached
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._fingerprint: str | None = None

    # ----- what a subclass supplies -------------------------------------------------------------------------------

    @property
    @abstractmethod
    def text_columns(self) -> list[str]:
        """The input column(s), in order (what predictions are written next to)."""

    @property
    @abstractmethod
    def windowed(self) -> bool:
        """Whether the split logs count long examples as cut into windows (``True``) or as truncated."""

    @abstractmethod
    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer to encode with; its fingerprint keys the cache."""

    @abstractmethod
    def _read(self, path: str, data: bytes | None = None) -> Table:
        """Reads a file (from ``data``, its bytes, when given) into a table of records."""

    @abstractmethod
    def _vocabulary(self, train: str) -> list[str]:
        """The training file's label vocabulary, checked against a hand-written ``label_names``."""

    @abstractmethod
    def _encode_settings(self, split: Split) -> Any:
        """A frozen dataclass of everything besides the file and tokenizer that decides the split's encoding."""

    @abstractmethod
    def _encode(self, table: Table, settings: Any) -> tuple[Dataset, dict[str, Any]]:
        """Encodes a table: the dataset (with ``row``, ``line``, ``length`` columns) and facts for the cache.

        The facts are ``truncated``, ``skipped`` and ``unit`` (what error messages count in the file).
        """

    @abstractmethod
    def _collator(self) -> Collator:
        """Pads a list of encoded examples into a batch."""

    # ----- labels -------------------------------------------------------------------------------------------------

    @property
    def label_names(self) -> list[str]:
        """The class vocabulary, in output order; ``[]`` for regression. Reads the training labels on first use."""
        if self.task == "regression":
            return []
        train = self.splits["train"].file
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

    def _cache_classes(self, key: str, classes: list[str]) -> None:
        """Caches a training file's classes with the tokenised splits: now if they are in use, else with the first.

        So a run that its checks refuse before any split is tokenised leaves no cache folder behind.
        """
        self._unsaved_classes = key, classes
        if self.cache_events:
            self._save_classes()

    def _save_classes(self) -> None:
        if self._unsaved_classes is not None:
            self.cache.save_json("label-classes", *self._unsaved_classes)
            self._unsaved_classes = None

    @property
    def num_labels(self) -> int:
        """Output size the model needs: the number of classes, or 1 for regression. Valid right after ``__init__``."""
        return 1 if self.task == "regression" else len(self.label_names)

    def state_dict(self) -> dict[str, Any]:
        """What checkpoints carry: the labels, and the held-out validation rows' count and hash.

        The labels let a model test or predict without its training file; the hash lets a resumed run check that
        ``val_fraction`` holds out the same rows.
        """
        resolvable = self._label_names is not None or self.splits["train"].file is not None
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
        known = self._label_names is not None or self.splits["train"].file is not None
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

    def _check_known_labels(self, split: Split, dataset: Dataset) -> None:
        state = self.splits[split]
        if LABELS not in dataset.column_names or self.task == "regression" or state.labels_checked:
            return
        where = f"{self._path(split)}, {state.unit or 'line'}"
        check_known(column(dataset, LABELS), column(dataset, LINE), self.label_names, where)
        state.labels_checked = True

    def label_counts(self) -> list[int]:
        """Training examples per class, in ``label_names`` order (per label for multilabel).

        What ``balanced`` class weights are computed from. Windows of a long text count once each, as the loss sees
        them.
        """
        if self.task == "regression":
            raise DataError("regression has no classes to count")
        index = {name: i for i, name in enumerate(self.label_names)}
        counts = [0] * len(index)
        for label in column(self._ensure("train"), LABELS):
            for name in label if isinstance(label, list) else [label]:
                counts[index[name]] += 1
        return counts

    # ----- splits -------------------------------------------------------------------------------------------------

    @property
    def has_val(self) -> bool:
        """Whether there is validation data: a ``val_file``, or rows held out by ``val_fraction``."""
        train, val = self.splits["train"].file, self.splits["val"].file
        return val is not None or (self.val_fraction is not None and train is not None)

    @property
    def files(self) -> dict[Split, str | None]:
        """Each split's file as given (``None``: none)."""
        return {split: state.file for split, state in self.splits.items()}

    @property
    def datasets(self) -> dict[Split, Dataset]:
        """The encoded splits kept so far (by ``setup``, or the first loader of a split)."""
        return known(self.splits, "dataset")

    @property
    def cache_events(self) -> dict[Split, str]:
        """What happened to each split's cache in this process: ``"built"`` or ``"loaded"`` (tests and logs read it)."""
        return known(self.splits, "cache_event")

    @property
    def truncated(self) -> dict[Split, int]:
        """Per split: how many examples were truncated to ``max_length`` (or cut into windows)."""
        return known(self.splits, "truncated")

    @property
    def skipped(self) -> dict[Split, int]:
        """Per split: how many rows were skipped for an empty text."""
        return known(self.splits, "skipped")

    @property
    def unknown_fraction(self) -> dict[Split, float]:
        """Per split: the share of its text tokens that the tokenizer maps to its unknown token."""
        return known(self.splits, "unknown_fraction")

    def num_train_examples(self) -> int:
        """Examples in the training split (windows count one each)."""
        return self._ensure("train").num_rows

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer the splits are encoded with (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _tokenizer_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tokenizer_fingerprint(self.tokenizer)
        return self._fingerprint

    def raw_split(self, split: Split) -> pd.DataFrame:
        """The split's file as read, every original column, indexed by ``row`` (what batches carry)."""
        return self._read(self._path(split)).frame

    def _path(self, split: Split) -> str:
        if split == "val" and self.splits["val"].file is None and self.val_fraction is not None:
            split = "train"  # held-out rows of the training file
        path = self.splits[split].file
        if path is None:
            raise DataError(f"no {split}_file was given, so the {split} split cannot be used. Set `{split}_file`.")
        return path

    def _stage_splits(self, stage: str | None) -> tuple[Split, ...]:
        wanted = STAGE_SPLITS.get(stage or "", SPLITS)
        return tuple(s for s in wanted if self.splits[s].file is not None or (s == "val" and self.has_val))

    def prepare_data(self) -> None:
        """Tokenises and caches the splits the current trainer stage needs (Lightning runs this on one process)."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        for split in self._stage_splits(str(stage.value) if stage is not None else None):
            # Labels checked here, before Lightning creates the loggers' folders and saves the config: a run that
            # stops on a label unseen in training leaves no half-made run behind.
            self._check_known_labels(split, self._load_or_build(split))

    def setup(self, stage: str | None = None) -> None:
        """Loads the stage's splits from the cache, building any that ``prepare_data`` did not."""
        for split in self._stage_splits(stage):
            self._ensure(split)

    def _ensure(self, split: Split) -> Dataset:
        state = self.splits[split]
        if state.dataset is None:
            state.dataset = self._load_or_build(split)
            state.lengths = column(state.dataset, LENGTH)
        return state.dataset

    def _load_or_build(self, split: Split) -> Dataset:
        if self.val_fraction is None or split not in ("train", "val"):
            return self._load_or_build_file(split)
        if self._full_train is None:
            self._full_train = self._load_or_build_file("train")
        full = self._full_train
        held = set(self._hold_out(full).rows)
        keep = [i for i, row in enumerate(column(full, ROW)) if (row in held) == (split == "val")]
        self.splits[split].take_file_facts(self.splits["train"])
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
            "file": self.splits["train"].digest,  # the bytes `full` was encoded from, hashed when it was loaded
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
            labels = column(full, LABELS) if stratify else None
            held = hold_out(column(full, ROW), labels, self.val_fraction, self.seed, stratify, path)
            self.cache.save_json("val-split", key, {"rows": list(held.rows), "total": held.total,
                                                    "stratified": held.stratified})  # fmt: skip
        self._held_out = held
        rank_zero_info(describe(held, self.val_fraction, path))
        if self.task != "regression":
            names, given = self.label_names, self._label_names_given
            check_training_classes(held, column(full, ROW), column(full, LABELS), names, given, self.val_fraction, path)
        return held

    def _load_or_build_file(self, split: Split) -> Dataset:
        path, state = self._path(split), self.splits[split]
        data = read_bytes(path)
        settings = self._encode_settings(split)
        state.digest = sha256_bytes(data)
        parts = {"file": state.digest, "read": asdict(self.read_options), "encode": asdict(settings)}
        key = cache_key({**parts, "tokenizer": self._tokenizer_fingerprint(), "tokenizers": tokenizers.__version__})
        dataset, meta, state.cache_event = self.cache.get_or_build(
            split, key, lambda: self._encode(self._read(path, data), settings)
        )
        self._save_classes()
        if state.truncated is None:  # report once per split and process
            state.truncated, state.skipped, state.unit = meta["truncated"], meta["skipped"], meta["unit"]
            rank_zero_info(
                f"{split} ({path}): {dataset.num_rows} examples, {meta['truncated']} "
                + (f"longer than {self.max_length} tokens cut into windows" if self.windowed else
                   f"truncated to {self.max_length} tokens")
                + f", {meta['skipped']} empty texts skipped; cache {state.cache_event}"
            )  # fmt: skip
            self._warn_unknown_tokens(split, path, dataset)
        return dataset

    def _warn_unknown_tokens(self, split: Split, path: str, dataset: Dataset) -> None:
        """Warns when the encoder's vocabulary cannot represent much of a split (Chinese text under an English one)."""
        fraction = unknown_fraction(dataset, self.tokenizer)
        self.splits[split].unknown_fraction = fraction
        if fraction > UNKNOWN_WARN_FRACTION:
            rank_zero_warn(
                f"{split} ({path}): {fraction:.0%} of its tokens are unknown to the tokenizer of "
                f"{self.tokenizer_name!r}: they all become {self.tokenizer.unk_token}, so the model cannot read them. "
                "Its vocabulary does not cover the language or script of this text: choose an encoder whose "
                "vocabulary does (for Chinese, a Chinese or multilingual checkpoint such as bert-base-chinese or "
                "xlm-roberta-base)."
            )

    # ----- loaders ------------------------------------------------------------------------------------------------

    def _dataset(self, split: Split) -> Dataset:
        dataset = self._ensure(split)  # also serves Python API use that never called setup
        self._check_known_labels(split, dataset)
        keep = [c for c in dataset.column_names if c not in (LINE, LENGTH)]
        return dataset.select_columns(keep)

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
            self.splits["train"].lengths,
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
        groups = column(dataset, ROW) if WINDOW in dataset.column_names else None
        sampler = LengthSortedSampler(self.splits[split].lengths, groups=groups)
        # A limit keeps the first batches: make them a fixed random sample, not the split's longest texts.
        kept = evaluated_examples(self.trainer, split, -(-len(sampler) // self.eval_batch_size), self.eval_batch_size)
        if kept is not None:
            sample = kept * sampler.num_replicas
            sampler.put_first(sample)
            rank_zero_info(
                f"trainer.limit_{split}_batches={getattr(self.trainer, f'limit_{split}_batches')}: {split} metrics come"
                f" from a fixed random sample of about {sample:,} of the {len(dataset):,} {split} examples, the same"
                " in every run"
            )
        return self._loader(dataset, sampler=sampler, batch_size=self.eval_batch_size)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches, sorted by length; none (validation skipped) without ``val_file`` or ``val_fraction``."""
        return self._eval_loader("val") if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        """Test batches, sorted by length."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches, sorted by length; ``row`` restores the file's order."""
        return self._eval_loader("predict")
