"""Token classification: word-to-subword alignment, windows over long sentences, and padding word labels.

Each sentence is tokenised once, as words (``is_split_into_words``), through the fast tokenizer; ``word_ids()`` says
which word each sub-token came from. A sentence longer than ``max_length`` is cut into windows of sub-tokens that
overlap by ``stride`` sub-tokens (each window gets its own special tokens), so nothing is truncated. Every word is
*owned* by exactly one window: the one, among those holding the word's first sub-token, where that sub-token has the
most context on its nearer side. Only the owning window's prediction for a word counts, so merging the windows back
gives exactly one tag per word.

The cache stores, per window, ``word_ids`` (the word of each sub-token, -1 for special tokens), ``first`` (1 on a
word's first sub-token) and ``word_index`` (the word on the first sub-token of each word this window owns, else -1),
and the sentence's tags as text. Labels are built in the collator, so the ``first`` / ``all`` sub-token policy and the
label vocabulary do not change the cache.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from datasets import Dataset
from tokenizers import Tokenizer
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from bertft.data.conll import TAGS, TOKENS
from bertft.data.encode import LABELS, LENGTH, LINE, ROW, Collator
from bertft.data.files import DataError, Table

#: Label of sub-tokens that no loss or metric reads (PyTorch's cross-entropy ``ignore_index``).
IGNORE_INDEX = -100
WORD_IDS, FIRST, WORD_INDEX = "word_ids", "first", "word_index"

LabelSubtokens = Literal["first", "all"]


@dataclass(frozen=True)
class TokenEncodeSettings:
    """What besides the file and the tokenizer decides a token split's encoding (part of its cache key).

    Attributes:
        labelled: Keep the tags (every split but ``predict``).
        max_length: Sub-tokens per window, special tokens included.
        stride: Sub-tokens shared by consecutive windows of a long sentence.
    """

    labelled: bool
    max_length: int
    stride: int


def _add_prefix_spaces(node: Any) -> bool:
    """Turns on ``add_prefix_space`` in every byte-level pre-tokeniser of a serialised pipeline; whether any was off."""
    if isinstance(node, list):
        return any([_add_prefix_spaces(n) for n in node])  # a list, not a generator: visit every node
    if not isinstance(node, dict):
        return False
    changed = node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False
    if changed:
        node["add_prefix_space"] = True
    return any([changed, *(_add_prefix_spaces(v) for k, v in node.items() if k != "type")])


def word_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer to encode sentences given as words, so each word is split as it would be in running text.

    Byte-level BPE (RoBERTa, ModernBERT) learns a word's pieces with the space before it (``Ġ``): given words one by
    one without ``add_prefix_space``, every word would be split as if it continued the previous one, into pieces the
    encoder rarely saw at a word start. WordPiece and SentencePiece (``▁``) already mark word starts themselves.

    Returns:
        ``tokenizer`` itself when nothing needs changing, else a copy whose byte-level pre-tokeniser adds the space.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if not _add_prefix_spaces(state.get("pre_tokenizer")):
        return tokenizer
    words = copy.deepcopy(tokenizer)
    words.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(state)).pre_tokenizer
    if hasattr(words, "add_prefix_space"):
        words.add_prefix_space = True
    return words


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids a single sequence gets before and after its words (``[CLS]`` and ``[SEP]`` for BERT)."""
    enc = tokenizer([["x"]], is_split_into_words=True)
    ids, word_ids = enc["input_ids"][0], enc.word_ids(0)
    first = word_ids.index(0)
    last = len(word_ids) - 1 - word_ids[::-1].index(0)
    return ids[:first], ids[last + 1 :]


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of at most ``size`` positions covering ``0..n``, consecutive ones sharing ``stride``."""
    if not 0 <= stride < size:
        raise ValueError(f"stride={stride} must be at least 0 and less than the window's {size} sub-tokens")
    spans, start = [], 0
    while True:
        end = min(start + size, n)
        spans.append((start, end))
        if end >= n:
            return spans
        start = end - stride


def owners(first_positions: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each word's first sub-token position, the window that owns it (most context on its nearer side)."""
    owner = []
    for p in first_positions:
        best, best_context = -1, -1
        for k, (s, e) in enumerate(spans):
            if s <= p < e and min(p - s, e - 1 - p) > best_context:
                best, best_context = k, min(p - s, e - 1 - p)
        owner.append(best)
    return owner


def _tokenize_words(
    tokenizer: PreTrainedTokenizerBase, sentences: list[list[str]]
) -> list[tuple[list[int], list[int]]]:
    """``(ids, word_ids)`` of each sentence without special tokens; a word with no sub-token becomes unknown."""
    enc = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    out = []
    for i, words in enumerate(sentences):
        ids, word_ids = enc["input_ids"][i], enc.word_ids(i)
        if len(set(word_ids)) < len(words):  # e.g. a zero-width space: the word would lose its prediction
            seen = set(word_ids)
            fixed = [w if j in seen else (tokenizer.unk_token or "?") for j, w in enumerate(words)]
            again = tokenizer([fixed], is_split_into_words=True, add_special_tokens=False)
            ids, word_ids = again["input_ids"][0], again.word_ids(0)
        out.append((list(ids), [int(w) for w in word_ids]))
    return out


def encode_sentences(
    table: Table, tokenizer: PreTrainedTokenizerBase, settings: TokenEncodeSettings
) -> tuple[Dataset, dict[str, Any]]:
    """Tokenises a table of sentences (see :func:`~bertft.data.conll.read_token_file`) into windows.

    Returns:
        One row per window, with ``input_ids`` (and ``token_type_ids`` when the tokenizer uses them), ``word_ids``,
        ``first``, ``word_index``, ``row`` (the sentence), ``line``, ``length`` and, when labelled, ``labels`` (the
        sentence's word tags); and facts for the cache: ``truncated`` (always 0), ``skipped``, ``unit``, ``path`` and
        ``windowed`` (sentences cut into more than one window).
    """
    tokenizer = word_tokenizer(tokenizer)
    sentences = table.frame[TOKENS].tolist()
    tags = table.frame[TAGS].tolist() if settings.labelled else None
    if tags is not None:
        untagged = [i for i, t in enumerate(tags) if t is None]
        if untagged:
            raise DataError(
                f"{table.where(untagged[0])}: the sentence has no tags ({len(untagged)} untagged sentences in the "
                "file). Training and evaluation files need `token TAG` on every line."
            )
    prefix, suffix = special_tokens(tokenizer)
    size = settings.max_length - len(prefix) - len(suffix)
    if size < 1:
        raise ValueError(f"max_length={settings.max_length} leaves no room for words after the special tokens")
    with_types = "token_type_ids" in tokenizer.model_input_names
    columns: dict[str, list[Any]] = {k: [] for k in ("input_ids", WORD_IDS, FIRST, WORD_INDEX, ROW, LINE, LENGTH)}
    if with_types:
        columns["token_type_ids"] = []
    if tags is not None:
        columns[LABELS] = []
    windowed = 0
    for start in range(0, len(sentences), 1000):  # batches keep the Rust tokenizer busy and memory bounded
        batch = sentences[start : start + 1000]
        for i, (ids, word_ids) in enumerate(_tokenize_words(tokenizer, batch), start=start):
            first = [int(p == 0 or word_ids[p - 1] != w) for p, w in enumerate(word_ids)]
            first_positions = [p for p, f in enumerate(first) if f]  # one per word, in word order
            spans = windows(len(ids), size, settings.stride)
            owner = owners(first_positions, spans)
            windowed += len(spans) > 1
            for k, (s, e) in enumerate(spans):
                owned = {p for p, o in zip(first_positions, owner, strict=True) if o == k}
                pad_ends = [-1] * len(prefix), [-1] * len(suffix)
                columns["input_ids"].append(prefix + ids[s:e] + suffix)
                columns[WORD_IDS].append(pad_ends[0] + word_ids[s:e] + pad_ends[1])
                columns[FIRST].append([0] * len(prefix) + first[s:e] + [0] * len(suffix))
                index = [word_ids[p] if p in owned else -1 for p in range(s, e)]
                columns[WORD_INDEX].append(pad_ends[0] + index + pad_ends[1])
                columns[ROW].append(i)
                columns[LINE].append(table.lines[i])
                columns[LENGTH].append(len(prefix) + e - s + len(suffix))
                if with_types:
                    columns["token_type_ids"].append([0] * (len(prefix) + e - s + len(suffix)))
                if tags is not None:
                    columns[LABELS].append(list(tags[i]))
    meta = {"truncated": 0, "skipped": 0, "unit": table.unit, "path": table.path, "windowed": windowed}
    return Dataset.from_dict(columns), meta


class TokenCollator(Collator):
    """Pads windows and turns each sentence's word tags into one label per sub-token.

    A word's first sub-token gets the word's tag. The other sub-tokens get ``-100`` (ignored) with
    ``label_subtokens="first"``, or, with ``"all"``, the word's tag with ``B-`` turned into ``I-`` (a continuation
    is inside the entity, not its start). Predictions are always read from first sub-tokens.

    Args:
        pad_token_id: The tokenizer's padding id.
        label_names: The tag vocabulary, in logit order.
        padding_side: ``"right"`` (BERT) or ``"left"``.
        label_subtokens: ``first`` or ``all``.
    """

    def __init__(
        self,
        pad_token_id: int,
        label_names: Sequence[str],
        padding_side: str = "right",
        label_subtokens: LabelSubtokens = "first",
    ) -> None:
        super().__init__(pad_token_id, "classification", label_names, padding_side)
        if label_subtokens not in ("first", "all"):
            raise ValueError(f"label_subtokens={label_subtokens!r}: choose 'first' or 'all'")
        self.label_subtokens = label_subtokens
        inside = {name: f"I-{name[2:]}" for name in label_names if name.startswith("B-")}
        self.continuation = {self.index[b]: self.index.get(i, self.index[b]) for b, i in inside.items()}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Pads a list of windows into a batch.

        Returns:
            The padded inputs, ``row``, ``word_index`` (``(B, T)``, -1 where no word's prediction is read) and, for
            labelled windows, ``labels`` (``(B, T)``, -100 where nothing is learned).
        """
        batch = super().__call__([{k: v for k, v in e.items() if k != LABELS} for e in examples])
        longest = batch["input_ids"].shape[1]
        batch[WORD_INDEX] = self._pad([e[WORD_INDEX] for e in examples], longest, -1)
        if LABELS in examples[0]:
            batch["labels"] = self._pad([self.token_labels(e) for e in examples], longest, IGNORE_INDEX)
        return batch

    def token_labels(self, example: dict[str, Any]) -> list[int]:
        """One label id per sub-token of a window."""
        tags = [self.index[t] for t in example[LABELS]]
        labels = []
        for w, first in zip(example[WORD_IDS], example[FIRST], strict=True):
            if w < 0:
                labels.append(IGNORE_INDEX)
            elif first:
                labels.append(tags[w])
            elif self.label_subtokens == "all":
                labels.append(self.continuation.get(tags[w], tags[w]))
            else:
                labels.append(IGNORE_INDEX)
        return labels

    def _pad(self, rows: list[list[int]], longest: int, value: int) -> Tensor:
        padded = torch.full((len(rows), longest), value, dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            if self.padding_side == "left":
                padded[i, longest - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            else:
                padded[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        return padded
