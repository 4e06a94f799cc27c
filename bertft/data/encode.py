"""Tokenising a table once into a ``datasets.Dataset``, and padding its examples into batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bertft.data.files import DataError, Table, is_missing
from bertft.data.labels import Label, Task, parse_labels
from bertft.encoder import resolve_encoder

#: Columns every encoded split has, besides the tokenizer's own (``input_ids``, maybe ``token_type_ids``).
ROW, LINE, LENGTH, LABELS = "row", "line", "length", "labels"
#: Column of splits encoded with ``long_texts: windows``: each example's place among its document's windows.
WINDOW = "window"

#: Share of a split's text tokens that may be unknown (``[UNK]``) before bertft warns that the encoder's vocabulary
#: does not cover the text. English text under an English vocabulary has almost none (SST-2 under MiniLM: 0%);
#: Chinese reviews under MiniLM's English vocabulary have 64%.
UNKNOWN_WARN_FRACTION = 0.05


def column(dataset: Dataset, name: str) -> list[Any]:
    """One column of an encoded split as a list."""
    # Straight from Arrow: indexing a Dataset by column name decodes row by row, 30x slower on 60k rows.
    return dataset.data.column(name).to_pylist()


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The encoder's fast tokenizer; a short packaged name such as ``"minilm"`` is resolved first."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(name_or_path))
    if not tokenizer.is_fast:
        raise ValueError(
            f"tokenizer {name_or_path!r} has no fast (Rust) version; bertft needs one to tokenise in batches and to "
            "count truncated examples. Use an encoder whose folder has a tokenizer.json."
        )
    return tokenizer


def unknown_fraction(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> float:
    """The share of an encoded split's text tokens (special tokens left out) that the tokenizer could not represent.

    Counted in Arrow over the ``input_ids`` column, without decoding rows (about 10 ms per million tokens).
    """
    unk = tokenizer.unk_token_id
    if unk is None or dataset.num_rows == 0:  # byte-level BPE has no unknown token: every byte has a piece
        return 0.0
    ids = pc.list_flatten(dataset.data.column("input_ids"))
    special = [i for i in tokenizer.all_special_ids if i != unk]
    text = pc.invert(pc.is_in(ids, value_set=pa.array(special, type=ids.type)))
    n_text = pc.sum(text).as_py() or 0
    n_unk = pc.sum(pc.equal(ids, pa.scalar(unk, type=ids.type))).as_py() or 0
    return n_unk / n_text if n_text else 0.0


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the tokenizer's output: vocabulary, normaliser, special-token template.

    Hashing the serialised Rust tokenizer covers hub names and local folders alike. Its ``truncation`` and
    ``padding`` entries are dropped: transformers changes them on every call, and they do not affect our output.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    # No sort_keys: the Rust side serialises in a fixed order, and sorting a 30k-entry vocabulary costs 40 ms.
    blob = json.dumps([type(tokenizer).__name__, tokenizer.model_input_names, state])
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class EncodeSettings:
    """Everything besides the file and the tokenizer that decides a split's encoding (so, part of its cache key).

    Attributes:
        text_columns: One text column, or two for pairs.
        label_column: The label column, or ``None`` for an unlabelled split.
        task: How to parse labels.
        label_delimiter: Multilabel separator, ``None`` for JSON lists.
        max_length: Token limit.
        skip_empty_text: Skip rows with an empty text instead of raising.
        stride: ``None`` truncates long texts; a number cuts them into windows that share ``stride`` tokens.
    """

    text_columns: tuple[str, ...]
    label_column: str | None
    task: Task
    label_delimiter: str | None
    max_length: int
    skip_empty_text: bool
    stride: int | None = None


def encode_table(table: Table, tokenizer: PreTrainedTokenizerBase, settings: EncodeSettings) -> tuple[Dataset, dict]:
    """Validates a file's texts and labels and tokenises it.

    Returns:
        The encoded dataset (see :func:`encode`), and facts for the cache to keep: ``truncated`` and ``skipped``
        counts, ``unit`` (what the ``line`` column counts) and ``path``.
    """
    text_columns, label_column = settings.text_columns, settings.label_column
    for column in text_columns:
        table.require(column, "text column")
    texts = [table.frame[c].tolist() for c in text_columns]
    empty = [i for i in range(len(table.frame)) if any(_is_empty(col[i]) for col in texts)]
    if empty and not settings.skip_empty_text:
        column = next(c for c, col in zip(text_columns, texts, strict=True) if _is_empty(col[empty[0]]))
        raise DataError(
            f"{table.where(empty[0])}: the text in column {column!r} is empty ({len(empty)} empty row(s) in the file). "
            "Fix or remove these rows, or set `skip_empty_text: true` to skip them."
        )
    keep = sorted(set(range(len(table.frame))) - set(empty))
    labels = parse_labels(table, label_column, settings.task, settings.label_delimiter) if label_column else None
    dataset, truncated = encode(
        tokenizer,
        texts=[str(texts[0][i]) for i in keep],
        pairs=[str(texts[1][i]) for i in keep] if len(texts) > 1 else None,
        rows=keep,
        lines=[table.lines[i] for i in keep],
        labels=[labels[i] for i in keep] if labels is not None else None,
        max_length=settings.max_length,
        stride=settings.stride,
    )
    if empty:
        rank_zero_warn(
            f"{table.path}: skipped {len(empty)} rows with an empty text (first at {table.where(empty[0])})."
        )
    return dataset, {"truncated": truncated, "skipped": len(empty), "unit": table.unit, "path": table.path}


def _is_empty(value: Any) -> bool:
    return is_missing(value) or not str(value).strip()


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    rows: Sequence[int],
    lines: Sequence[int],
    labels: Sequence[Label] | None,
    max_length: int,
    stride: int | None = None,
) -> tuple[Dataset, int]:
    """Tokenises every example in batches, truncating to ``max_length`` tokens or cutting it into windows.

    Args:
        tokenizer: A fast tokenizer.
        texts: First (or only) text of each example.
        pairs: Second text of each example, encoded as a pair with ``token_type_ids`` marking it; ``None`` for single
            texts.
        rows: 0-based row of each example in its file, returned in every batch to restore input order.
        lines: Line of each example in its file, for error messages.
        labels: Parsed labels, or ``None`` for an unlabelled split. Stored as text (classes) or floats, not indices,
            so the cache does not depend on the label vocabulary.
        max_length: Token limit, special tokens included.
        stride: ``None`` truncates. A number cuts a longer text into windows of ``max_length`` tokens, consecutive
            windows sharing ``stride`` tokens; each window becomes an example with the text's ``row``, ``line`` and
            label, and a ``window`` column numbers them within the text.

    Returns:
        The dataset (columns: tokenizer outputs without ``attention_mask``, ``row``, ``line``, ``length``, maybe
        ``labels`` and ``window``) and how many examples were truncated (or cut into more than one window).
    """
    columns: dict[str, Any] = {"text": list(texts), ROW: list(rows), LINE: list(lines)}
    if pairs is not None:
        columns["text_pair"] = list(pairs)
    if labels is not None:
        columns[LABELS] = list(labels)
    truncated = 0

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        nonlocal truncated
        if stride is not None:
            return windows(batch)
        # Pairs always carry token_type_ids, even where the tokenizer class leaves them out by default (ALBERT under
        # transformers 5): the model passes them on only to encoders with a segment embedding.
        pair = "text_pair" in batch
        enc = tokenizer(
            batch["text"],
            batch.get("text_pair"),
            truncation=True,
            max_length=max_length,
            return_token_type_ids=pair or None,
        )
        # The Rust encodings keep what truncation cut off, so counting needs no second, untruncated pass.
        truncated += sum(bool(e.overflowing) for e in enc.encodings)
        # attention_mask is all ones before padding: the collator rebuilds it instead of storing it.
        out = {k: v for k, v in enc.items() if k != "attention_mask"}
        out[LENGTH] = [len(ids) for ids in enc["input_ids"]]
        return out

    def windows(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        nonlocal truncated
        enc = tokenizer(
            batch["text"], truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True
        )
        source = enc.pop("overflow_to_sample_mapping")  # the text each window comes from, in order
        out = {k: v for k, v in enc.items() if k != "attention_mask"}
        for key in (ROW, LINE, LABELS):
            if key in batch:
                out[key] = [batch[key][i] for i in source]
        numbers: list[int] = []
        for j, i in enumerate(source):  # 0, 1, ... within each text
            numbers.append(numbers[-1] + 1 if j and source[j - 1] == i else 0)
        out[WINDOW] = numbers
        truncated += sum(1 for w in out[WINDOW] if w == 1)  # texts with a second window
        out[LENGTH] = [len(ids) for ids in enc["input_ids"]]
        return out

    remove = ["text", "text_pair"] if pairs is not None else ["text"]
    if stride is not None:  # windows: one text gives several rows, so every input column is rebuilt
        remove = list(columns)
    dataset = Dataset.from_dict(columns).map(tokenize, batched=True, batch_size=1000, remove_columns=remove)
    return dataset, truncated


class Collator:
    """Pads a list of encoded examples to the longest one and encodes the labels for the task.

    A class rather than a closure so that DataLoader worker processes can pickle it.

    Args:
        pad_token_id: The tokenizer's padding id.
        task: Decides the labels' dtype and shape.
        label_names: The class vocabulary (classification and multilabel).
        padding_side: ``"right"`` (BERT) or ``"left"``, as the tokenizer says.
    """

    def __init__(self, pad_token_id: int, task: Task, label_names: Sequence[str], padding_side: str = "right") -> None:
        self.pad_token_id = pad_token_id
        self.task = task
        self.index = {name: i for i, name in enumerate(label_names)}
        self.padding_side = padding_side

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Returns ``input_ids``, ``attention_mask``, maybe ``token_type_ids``, ``row`` and maybe ``labels``."""
        longest = max(len(e["input_ids"]) for e in examples)
        batch: dict[str, Tensor] = {}
        pad_values = {"input_ids": self.pad_token_id, "token_type_ids": 0, "attention_mask": 0}
        for key, pad in pad_values.items():
            if key != "attention_mask" and key not in examples[0]:
                continue
            padded = torch.full((len(examples), longest), pad, dtype=torch.long)  # (B, T)
            for i, e in enumerate(examples):
                n = len(e["input_ids"])
                values = torch.ones(n, dtype=torch.long) if key == "attention_mask" else torch.as_tensor(e[key])
                if self.padding_side == "left":
                    padded[i, longest - n :] = values
                else:
                    padded[i, :n] = values
            batch[key] = padded
        batch[ROW] = torch.tensor([e[ROW] for e in examples], dtype=torch.long)  # (B,)
        if WINDOW in examples[0]:  # the model merges a text's windows back into one prediction by `row`
            batch[WINDOW] = torch.tensor([e[WINDOW] for e in examples], dtype=torch.long)  # (B,)
        if LABELS in examples[0]:
            batch["labels"] = self._labels([e[LABELS] for e in examples])
        return batch

    def _labels(self, labels: list[Any]) -> Tensor:
        if self.task == "regression":
            return torch.tensor(labels, dtype=torch.float)  # (B,)
        if self.task == "multilabel":
            hot = torch.zeros(len(labels), len(self.index), dtype=torch.float)  # (B, num_labels)
            for i, names in enumerate(labels):
                hot[i, [self.index[n] for n in names]] = 1.0
            return hot
        return torch.tensor([self.index[name] for name in labels], dtype=torch.long)  # (B,)
