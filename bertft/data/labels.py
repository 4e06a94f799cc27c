"""Parsing label cells and building the label vocabulary."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

from bertft.data.files import DataError, Table, is_missing

Task = Literal["classification", "multilabel", "regression"]
TASKS: tuple[str, ...] = ("classification", "multilabel", "regression")

#: One parsed label: a class name, a list of class names (multilabel) or a number (regression).
Label = str | list[str] | float


def label_string(value: Any) -> str:
    """A class label as the vocabulary stores it: ``1`` and ``1.0`` from JSON both become ``"1"``, like CSV's ``1``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def parse_labels(table: Table, column: str, task: Task, delimiter: str | None) -> list[Label]:
    """Parses every label of ``table[column]``, raising with the row's place on the first bad one.

    Args:
        table: The file's records.
        column: The label column.
        task: ``classification``: one class per row; ``multilabel``: zero or more classes per row, split by
            ``delimiter`` or written as a JSON list; ``regression``: a finite number.
        delimiter: Multilabel separator; ``None`` means each cell is a JSON list.

    Returns:
        One label per row.
    """
    table.require(column, "label column")
    parsed: list[Label] = []
    for i, value in enumerate(table.frame[column].tolist()):
        if is_missing(value) or (isinstance(value, str) and not value.strip() and task != "multilabel"):
            raise DataError(
                f"{table.where(i)}: the label column {column!r} is empty. Every training/evaluation row needs a "
                "label; fix or remove the row."
            )
        if task == "regression":
            parsed.append(_number(table, i, column, value))
        elif task == "multilabel":
            parsed.append(_label_list(table, i, value, delimiter))
        else:
            parsed.append(label_string(value))
    return parsed


def _number(table: Table, i: int, column: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DataError(
            f"{table.where(i)}: label {value!r} in column {column!r} is not a finite number, but `task` is "
            "regression. Fix the row, or set `task: classification` if the labels are classes."
        )
    return number


def _label_list(table: Table, i: int, value: Any, delimiter: str | None) -> list[str]:
    if isinstance(value, list):  # JSONL already holds a list
        items = value
    elif delimiter is not None:
        items = str(value).split(delimiter)
    else:
        try:
            items = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            items = None
        if not isinstance(items, list):
            raise DataError(
                f'{table.where(i)}: multilabel label {value!r} is not a JSON list such as ["a", "b"]. Write the '
                "labels as a JSON list, or set `label_delimiter` (for example ',') to the character between them."
            )
    names = [label_string(item) for item in items]
    return sorted({name for name in names if name})  # order and repeats within a cell carry no meaning


def vocabulary(labels: Sequence[Label], task: Task) -> list[str]:
    """The sorted set of classes in ``labels``: numerically when every class is a number, else alphabetically."""
    if task == "regression":
        return []
    classes: set[str] = set()
    for label in labels:
        classes.update(label if isinstance(label, list) else [str(label)])
    try:
        return sorted(classes, key=lambda c: (float(c), c))
    except ValueError:
        return sorted(classes)


def check_given(given: Sequence[str], observed: Sequence[str], path: str) -> None:
    """Raises when the training data holds labels missing from the hand-written ``label_names``."""
    duplicates = sorted({n for n in given if list(given).count(n) > 1})
    if duplicates:
        raise DataError(f"`label_names` lists {duplicates} more than once; each class must appear once.")
    extra = [label for label in observed if label not in set(given)]
    if extra:
        raise DataError(
            f"{path} has labels {extra} that are not in `label_names` {list(given)}. Add them to `label_names`, or "
            "remove `label_names` to take the vocabulary from the training data."
        )


def training_vocabulary(observed: Sequence[str], path: str, task: Task, given: Sequence[str] | None) -> list[str]:
    """The class vocabulary for a training file: ``given`` (checked against the file's classes) or ``observed``.

    Args:
        observed: The file's own sorted classes (:func:`vocabulary` of its parsed labels).
        path: The file, for messages.
        task: The task.
        given: Hand-written ``label_names``, or ``None``.

    Warns, without failing, when every training example has the same class.
    """
    if task == "classification" and len(observed) < 2:
        rank_zero_warn(f"every training example in {path} has the label {list(observed)}: the model can learn nothing.")
    if given is None:
        return list(observed)
    check_given(given, observed, path)
    return list(given)


def check_known(labels: Sequence[Label], lines: Sequence[int], known: Sequence[str], where: str) -> None:
    """Raises on the first label that is not in ``known``, naming its place as ``"{where} {line}"``."""
    known_set = set(known)
    for label, line in zip(labels, lines, strict=True):
        for name in label if isinstance(label, list) else [label]:
            if name not in known_set:
                raise DataError(
                    f"{where} {line}: label {name!r} never appears in the training data; known labels are "
                    f"{list(known)}. Fix the row, remove it, or list every class in `label_names`."
                )
