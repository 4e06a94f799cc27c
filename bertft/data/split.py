"""One split's record, and the validation split held out of a training file (stratified or at random, reproducibly)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_warn

from bertft.data.files import DataError
from bertft.data.labels import Label

Split = Literal["train", "val", "test", "predict"]
SPLITS: tuple[Split, ...] = ("train", "val", "test", "predict")
#: The splits each trainer stage uses (all of them for any other stage, or none).
STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
}


@dataclass
class SplitState:
    """What a data module knows of one split in this process; each fact ``None`` until known.

    Attributes:
        file: The split's file as given; ``None`` for none (``val`` may then be held out of the training file).
        digest: The sha256 of the bytes the split was encoded from (part of its cache key).
        dataset: The encoded split the loaders serve, kept by ``setup`` (or the first loader).
        lengths: Its examples' lengths in tokens, which the samplers group and sort by (with ``dataset``).
        cache_event: What happened to its cache entry in this process: ``"built"`` or ``"loaded"``.
        truncated: Examples truncated to ``max_length`` (or cut into windows).
        skipped: Rows skipped because their text was empty.
        unit: What error messages count in its file: ``"line"`` or ``"row"``.
        unknown_fraction: The share of its text tokens that the tokenizer maps to its unknown token.
        labels_checked: Whether its labels were checked against the label vocabulary.
    """

    file: str | None
    digest: str | None = None
    dataset: Dataset | None = None
    lengths: list[int] = field(default_factory=list)
    cache_event: str | None = None
    truncated: int | None = None
    skipped: int | None = None
    unit: str | None = None
    unknown_fraction: float | None = None
    labels_checked: bool = False

    def take_file_facts(self, source: SplitState) -> None:
        """Takes the facts of the file this split was cut from (``val`` held out of ``train``) that it lacks."""
        for name in ("cache_event", "truncated", "skipped", "unit"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(source, name))


def known(splits: dict[Split, SplitState], fact: str) -> dict[Split, Any]:
    """One fact of every split that knows it, e.g. ``{"train": "built", "val": "loaded"}`` for ``cache_event``."""
    return {split: getattr(state, fact) for split, state in splits.items() if getattr(state, fact) is not None}


def check_val_fraction(val_fraction: int | float | None, val_file: str | None) -> None:
    """Refuses a ``val_fraction`` neither in (0, 1) nor a whole number of rows, or given with a ``val_file``."""
    if val_fraction is None:
        return
    if val_file is not None:
        raise ValueError(
            f"data.val_file ({val_file}) and data.val_fraction ({val_fraction}) are both set: give one. val_fraction "
            "holds rows of train_file out for validation when there is no validation file."
        )
    is_count = isinstance(val_fraction, int) and not isinstance(val_fraction, bool)
    if (is_count and val_fraction < 1) or (not is_count and not 0.0 < val_fraction < 1.0):
        raise ValueError(
            f"data.val_fraction={val_fraction} is outside (0, 1): give the share of train_file's rows to hold out "
            "for validation (e.g. 0.1), or a whole number of rows (e.g. 1000)."
        )


@dataclass(frozen=True)
class HeldOut:
    """The rows of a training file held out for validation.

    Attributes:
        rows: The held-out rows (0-based rows of the file, sorted).
        total: Rows in the training file (after skipping empty texts).
        stratified: Whether each class kept its share.
    """

    rows: tuple[int, ...]
    total: int
    stratified: bool

    @property
    def digest(self) -> str:
        """A short hash of the held-out rows: what checkpoints record to prove a resumed run holds out the same."""
        return hashlib.sha256(",".join(map(str, self.rows)).encode()).hexdigest()[:16]


def hold_out(
    rows: Sequence[int], labels: Sequence[Label] | None, val_fraction: float, seed: int, stratify: bool, path: str
) -> HeldOut:
    """Chooses the rows to hold out for validation.

    Stratified: each class gives ``val_fraction`` of its rows (largest-remainder rounding, so the total is exact).
    Otherwise a uniformly random subset. Either way a function of the rows, labels, fraction and seed alone, so
    ``fit``, ``validate`` and a resumed run hold out the same rows.

    Args:
        rows: The file row of every encoded example; examples cut into windows repeat their row, and stay together.
        labels: Each example's label (used when stratifying).
        val_fraction: A fraction in (0, 1), or a whole number of rows.
        seed: Seed of the draw.
        stratify: Keep each class's share (single-label classification).
        path: The training file, for messages.

    Raises:
        DataError: The split would leave no validation row or no training row.
    """
    first: dict[int, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row, i)
    unique = list(first)
    total = len(unique)
    wanted = val_fraction if isinstance(val_fraction, int) else round(val_fraction * total)
    if wanted < 1:
        raise DataError(
            f"data.val_fraction={val_fraction} of the {total} rows of {path} is no row: raise val_fraction, or give "
            "a val_file."
        )
    if wanted >= total:
        raise DataError(
            f"data.val_fraction={val_fraction} holds out {wanted} of the {total} rows of {path}, leaving no training "
            "row: lower val_fraction."
        )
    generator = torch.Generator().manual_seed(seed)
    if not stratify or labels is None:
        order = torch.randperm(total, generator=generator)[:wanted].tolist()
        return HeldOut(tuple(sorted(unique[i] for i in order)), total, stratified=False)
    by_class: dict[str, list[int]] = {}
    for row in unique:
        by_class.setdefault(str(labels[first[row]]), []).append(row)
    classes = sorted(by_class)
    quotas = {c: len(by_class[c]) * wanted / total for c in classes}
    taken = {c: math.floor(q) for c, q in quotas.items()}
    # Largest remainders get the rows that flooring left over; ties go to the class named first, so it is stable.
    for c in sorted(classes, key=lambda c: (taken[c] - quotas[c], c))[: wanted - sum(taken.values())]:
        taken[c] += 1
    held: list[int] = []
    for c in classes:
        members = by_class[c]
        order = torch.randperm(len(members), generator=generator)[: taken[c]].tolist()
        held.extend(members[i] for i in order)
    return HeldOut(tuple(sorted(held)), total, stratified=True)


def describe(held: HeldOut, val_fraction: float, path: str) -> str:
    """``val: 10% of train.csv, stratified, 1,000 rows (train keeps 9,000; rows 3f2a...)``: the hash compares runs."""
    share = f"{val_fraction:g} rows" if isinstance(val_fraction, int) else f"{val_fraction * 100:g}%"
    how = "stratified" if held.stratified else "random"
    rest = held.total - len(held.rows)
    return f"val: {share} of {path}, {how}, {len(held.rows):,} rows (train keeps {rest:,}; rows {held.digest})"


def check_training_classes(
    held: HeldOut,
    rows: Sequence[int],
    labels: Sequence[Label],
    label_names: Sequence[str],
    names_given: bool,
    val_fraction: float,
    path: str,
) -> None:
    """Refuses a split that leaves a class without a training row, unless ``label_names`` lists them by hand.

    Args:
        held: The rows held out.
        rows: The file row of every encoded example.
        labels: Each example's label.
        label_names: The class vocabulary.
        names_given: Whether the vocabulary was written by hand (then a class may go untrained, with a warning).
        val_fraction: The setting that held the rows out, for messages.
        path: The training file, for messages.

    Raises:
        DataError: A class has no training row left and ``label_names`` was not given.
    """
    validation = set(held.rows)
    seen: set[str] = set()
    for row, label in zip(rows, labels, strict=True):
        if row not in validation:
            seen.update(label if isinstance(label, list) else [label])
    missing = [name for name in label_names if name not in seen]
    if not missing:
        return
    message = (
        f"after holding out data.val_fraction={val_fraction} of {path} for validation, class(es) {missing} "
        "have no training row left"
    )
    if not names_given:
        raise DataError(
            f"{message}: the model could never learn them. Use a larger training share (a smaller val_fraction), "
            "add rows of those classes, give a val_file, or list every class in data.label_names to train "
            "without them."
        )
    rank_zero_warn(f"{message}; they stay in data.label_names but the model will not learn them.")
