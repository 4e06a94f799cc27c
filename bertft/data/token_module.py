"""``TokenDataModule``: token classification (NER), one tag per word, from CoNLL or JSONL files."""

from __future__ import annotations

from typing import Any, Literal

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from bertft.data.base import EncodedDataModule
from bertft.data.conll import TAGS, TOKENS, read_token_file
from bertft.data.encode import load_tokenizer
from bertft.data.files import DataError, ReadOptions, Table
from bertft.data.labels import training_vocabulary
from bertft.data.split import Split
from bertft.data.tokens import LabelSubtokens, TokenCollator, TokenEncodeSettings, encode_sentences, word_tokenizer

#: TextDataModule's settings that this module's hparams (so its checkpoints) recorded while it was a TextDataModule
#: subclass, at the values it reads with. Kept so that ``hparams`` stay as they were; nothing reads them back.
_TEXT_HPARAMS: dict[str, Any] = {
    "text_column": TOKENS,
    "text_pair_column": None,
    "label_column": TAGS,
    "label_delimiter": None,
    "file_format": "auto",
    "delimiter": None,
    "quoting": True,
    "header": True,
    "column_names": None,
    "extra_fields": "error",
    "skip_empty_text": False,
    "long_texts": "truncate",
}


class TokenDataModule(EncodedDataModule):
    """One tag per word, from CoNLL files (``token ... TAG`` lines, blank lines between sentences) or JSONL.

    Words are split into sub-tokens by the encoder's fast tokenizer and labelled on their first sub-token. A sentence
    longer than ``max_length`` is cut into overlapping windows and merged back, so every word gets one prediction.
    Caching, length-grouped batching and DDP sharding are :class:`~bertft.data.EncodedDataModule`'s; each window is
    one example. Prediction files need only the words: one token per line, or JSONL ``{"tokens": [...]}``.

    Args:
        train_file: Training data: CoNLL (any extension but ``.jsonl``; ``-DOCSTART-`` lines are skipped) or JSONL
            with ``tokens`` and ``tags`` lists, or a ``bundled://`` path.
        val_file: Validation data.
        test_file: Test data.
        predict_file: Data to predict; tags are not needed.
        task: Always ``token`` (the CLI links it from ``model.task``).
        label_names: Fixed tag vocabulary and order; by default the sorted tags of the training file.
        label_subtokens: Which sub-tokens of a word learn its tag: ``first`` (the others are ignored, as in the BERT
            paper) or ``all`` (continuations learn the tag, ``B-`` turned into ``I-``). Predictions always come from
            the first sub-token.
        stride: Sub-tokens shared by consecutive windows of a sentence longer than ``max_length``; each word's
            prediction comes from the window where it has the most context.
        encoding: Text encoding of the files.
        tokenizer: Encoder name or folder whose (fast) tokenizer to use (the CLI links it to ``model.encoder``).
        max_length: Sub-tokens per window, special tokens included.
        batch_size: Training batch size (per device), in windows.
        eval_batch_size: Validation/test/predict batch size; default ``batch_size``.
        group_by_length: Batch training windows of similar length together.
        num_workers: DataLoader worker processes.
        cache_dir: Folder for tokenised splits; default ``$BERTFT_CACHE`` or ``~/.cache/bertft``.
        seed: Seed of the training order (combined with the epoch number) and of the ``val_fraction`` draw.
        val_fraction: Without a ``val_file``: hold out this share of the training sentences (e.g. ``0.1``), or this
            many (a whole number), for validation, drawn at random with ``seed``.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        task: Literal["token"] = "token",
        label_names: list[str] | None = None,
        label_subtokens: LabelSubtokens = "first",
        stride: int = 32,
        encoding: str = "utf-8",
        tokenizer: str = "minilm",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        group_by_length: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        val_fraction: int | float | None = None,
    ) -> None:
        if task != "token":
            raise ValueError(f"TokenDataModule serves task 'token', got {task!r}; use TextDataModule for {task!r}")
        if label_subtokens not in ("first", "all"):
            raise ValueError(f"label_subtokens={label_subtokens!r}: choose 'first' or 'all'")
        if stride < 0:
            raise ValueError(f"stride={stride} must be at least 0")
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
            # Only the encoding applies to CoNLL and JSONL; the other fields stay at their defaults, as the cache
            # keys (which hold them all) always had them.
            read_options=ReadOptions(encoding=encoding),
            label_column=TAGS,
            skip_empty_text=False,
        )
        self.save_hyperparameters(_TEXT_HPARAMS)  # see _TEXT_HPARAMS; merged with the arguments below
        # label_names stay out: the model logs the resolved vocabulary, and Lightning refuses two differing values.
        self.save_hyperparameters(ignore=["label_names"])
        self.label_subtokens: LabelSubtokens = label_subtokens
        self.stride = stride

    @property
    def text_columns(self) -> list[str]:
        """``["tokens"]``: the words of each sentence (what predictions are written next to)."""
        return [TOKENS]

    @property
    def windowed(self) -> bool:
        """``False``: the split logs count truncated sentences, which are none.

        There is no ``long_texts`` setting here: a sentence longer than ``max_length`` is always cut into windows.
        """
        return False

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The encoder's tokenizer, set to split words given one by one as in running text (see ``word_tokenizer``).

        Its fingerprint, not the saved tokenizer's, keys the cache, so splits tokenised otherwise are never reused.
        """
        return word_tokenizer(load_tokenizer(self.tokenizer_name))

    def _read(self, path: str, data: bytes | None = None) -> Table:
        return read_token_file(path, self.read_options.encoding, data)

    def _vocabulary(self, train: str) -> list[str]:
        table = self._read(train)
        tags = table.frame[TAGS].tolist()
        untagged = [i for i, t in enumerate(tags) if t is None]
        if untagged:
            raise DataError(f"{table.where(untagged[0])}: a training sentence without tags; write `token TAG` lines.")
        observed = sorted({tag for sentence in tags for tag in sentence})
        return training_vocabulary(observed, table.path, self.task, self._label_names)

    def _encode_settings(self, split: Split) -> TokenEncodeSettings:
        return TokenEncodeSettings(labelled=split != "predict", max_length=self.max_length, stride=self.stride)

    def _encode(self, table: Table, settings: Any) -> tuple[Dataset, dict[str, Any]]:
        return encode_sentences(table, self.tokenizer, settings)

    def _collator(self) -> TokenCollator:
        tok = self.tokenizer
        return TokenCollator(tok.pad_token_id or 0, self.label_names, tok.padding_side, self.label_subtokens)
