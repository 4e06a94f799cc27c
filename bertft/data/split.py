"""Holding out a validation split from the training file: stratified by class, or at random, and reproducible."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bertft.data.files import DataError
from bertft.data.labels import Label


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
