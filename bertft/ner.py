"""Entity spans from IOB tags, seqeval-compatible scores, and the metric that computes them at epoch end.

The span rules are those of ``seqeval`` in its default mode (``conlleval``'s): a chunk starts at ``B-``, at an
``I-`` that follows ``O`` or another type, and ends when the type changes or a new chunk starts. IOB1, IOB2 and
IOBES tags all parse. ``tests/test_tasks_token.py`` checks every score against ``seqeval`` itself; bertft does not
depend on seqeval at run time because seqeval pulls in scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric


class Entity(NamedTuple):
    """One entity: its ``type`` and its words ``start`` (inclusive) to ``end`` (exclusive)."""

    type: str
    start: int
    end: int


def _split(tag: str) -> tuple[str, str]:
    # seqeval: the prefix is the first character, the type what follows the first "-" ("_" when there is none).
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O")):
        return True
    return prev not in ("O", ".") and prev_type != type_


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I")):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entities(tags: Sequence[str]) -> list[Entity]:
    """The entities of one sentence's tags, in order.

    Example:
        >>> entities(["B-PER", "I-PER", "O", "B-LOC"])
        [Entity(type='PER', start=0, end=2), Entity(type='LOC', start=3, end=4)]
    """
    found: list[Entity] = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):  # the trailing O closes a chunk open at the end
        prefix, type_ = _split(tag)
        if _ends(prev, prefix, prev_type, type_):
            found.append(Entity(prev_type, begin, i))
        if _starts(prev, prefix, prev_type, type_):
            begin = i
        prev, prev_type = prefix, type_
    return found


class Scores(NamedTuple):
    """Entity-level micro scores (exact span and type) and word-level tag accuracy."""

    precision: float
    recall: float
    f1: float
    accuracy: float


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Scores:
    """Micro precision, recall and F1 over exactly matching entities, and tag accuracy (as ``seqeval`` computes).

    Args:
        gold: One tag sequence per sentence.
        predicted: The predicted tags, aligned with ``gold``.

    Returns:
        The scores; a ratio with a zero denominator is 0 (seqeval's default, which also warns).
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    correct = n_gold = n_pred = right_tags = n_tags = 0
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted ones")
        gold_set, pred_set = set(entities(g)), set(entities(p))
        correct += len(gold_set & pred_set)
        n_gold, n_pred = n_gold + len(gold_set), n_pred + len(pred_set)
        right_tags += sum(a == b for a, b in zip(g, p, strict=True))
        n_tags += len(g)
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, right_tags / n_tags if n_tags else 0.0)


def word_sequences(rows: Tensor, words: Tensor, values: Tensor) -> list[list[int]]:
    """Regroups one value per ``(row, word)`` into per-row lists ordered by word, dropping repeated pairs.

    Repeats come from DDP padding (a rank re-runs a few examples); every word appears in one window only.

    Args:
        rows: ``(N,)`` the sentence of each value.
        words: ``(N,)`` the word index of each value within its sentence.
        values: ``(N,)`` or ``(N, K)``.
    """
    if rows.numel() == 0:
        return []
    key = rows.long() * (int(words.max()) + 1) + words.long()  # (N,) unique per (row, word)
    order = torch.argsort(key, stable=True)
    key, rows, values = key[order], rows[order], values[order]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    rows, values = rows[first], values[first]
    bounds = torch.nonzero(torch.diff(rows, prepend=rows[:1] - 1)).flatten().tolist() + [len(rows)]
    return [values[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class EntityScore(Metric):
    """One of :class:`Scores` over a whole evaluation set, computed at epoch end from word-level tags.

    ``update`` takes one predicted and one gold tag id per word, with the word's sentence (``row``) and position. The
    states are concatenated across processes (rank-aware), and repeated ``(row, word)`` pairs are dropped, so the score
    equals seqeval's on the full split.

    Args:
        label_names: Tag names (IOB), in logit order.
        score: Which score to return.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, label_names: Sequence[str], score: Literal["precision", "recall", "f1", "accuracy"] = "f1"
    ) -> None:
        super().__init__()
        if score not in Scores._fields:
            raise ValueError(f"score={score!r}: choose one of {', '.join(Scores._fields)}")
        self.label_names, self.score = list(label_names), score
        for name in ("preds", "target", "rows", "words"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, rows: Tensor, words: Tensor) -> None:
        """Adds ``(N,)`` predicted and gold tag ids with their ``(N,)`` sentence rows and word positions."""
        self.preds.append(preds.long())
        self.target.append(target.long())
        self.rows.append(rows.long())
        self.words.append(words.long())

    def compute(self) -> Tensor:
        """The score over every word seen."""

        def cat(state: list[Tensor] | Tensor) -> Tensor:
            return torch.cat(state) if isinstance(state, list) else state  # already concatenated after a DDP sync

        empty = self.rows.numel() == 0 if isinstance(self.rows, Tensor) else not self.rows  # a tensor after a DDP sync
        if empty:
            return torch.tensor(0.0)
        rows, words = cat(self.rows), cat(self.words)
        names = self.label_names
        pairs = torch.stack([cat(self.preds), cat(self.target)], dim=-1)  # (N, 2)
        sentences = word_sequences(rows, words, pairs)
        predicted = [[names[p] for p, _ in s] for s in sentences]
        gold = [[names[g] for _, g in s] for s in sentences]
        return torch.tensor(getattr(entity_scores(gold, predicted), self.score))
