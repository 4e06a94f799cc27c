"""``TextDataModule``: texts (or text pairs) with a class, several classes or a number each, from local tables."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from bertft.data.base import EncodedDataModule
from bertft.data.cache import cache_key, sha256_bytes
from bertft.data.encode import Collator, EncodeSettings, encode_table, load_tokenizer
from bertft.data.files import ReadOptions, Table, read_bytes, read_table
from bertft.data.labels import TASKS, Task, parse_labels, training_vocabulary, vocabulary
from bertft.data.split import Split


class TextDataModule(EncodedDataModule):
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

    task: Task

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
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        read_options = ReadOptions(
            file_format=file_format,
            delimiter=delimiter,
            quoting=quoting,
            header=header,
            column_names=tuple(column_names) if column_names else None,
            encoding=encoding,
            extra_fields=extra_fields,
        )
        super().__init__(
            train_file=train_file,
            val_file=val_file,
            test_file=test_file,
            predict_file=predict_file,
            task=task,
            label_names=label_names,
            tokenizer=tokenizer,
            max_length=max_length,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            group_by_length=group_by_length,
            num_workers=num_workers,
            cache_dir=cache_dir,
            seed=seed,
            val_fraction=val_fraction,
            read_options=read_options,
            label_column=label_column,
            skip_empty_text=skip_empty_text,
        )
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
        self.text_column, self.text_pair_column = text_column, text_pair_column
        self.label_delimiter = label_delimiter
        self.long_texts, self.stride = long_texts, stride

    @property
    def text_columns(self) -> list[str]:
        """The input text column(s), in order."""
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])

    @property
    def windowed(self) -> bool:
        """Whether long texts are cut into windows (``long_texts: windows``)."""
        return self.long_texts == "windows"

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_name)

    def _read(self, path: str, data: bytes | None = None) -> Table:
        return read_table(path, self.read_options, data)

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
            self._cache_classes(key, classes)
        return training_vocabulary(classes, train, self.task, self._label_names)

    def _encode_settings(self, split: Split) -> EncodeSettings:
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
        return encode_table(table, self.tokenizer, settings)

    def _collator(self) -> Collator:
        tok = self.tokenizer
        return Collator(tok.pad_token_id or 0, self.task, self.label_names, tok.padding_side)
