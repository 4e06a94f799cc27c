"""What differs between tasks: the loss, the metrics, and how logits become predictions.

Sequence tasks (``classification``, ``multilabel``, ``regression``) take ``(batch, num_outputs)`` logits; the
``token`` task takes ``(batch, seq, num_labels)`` logits from a per-token head (``TokenHead``, or
``WeightedLayersHead`` with ``reduce: none``) and reads each word's prediction at its first sub-token, where the
batch's ``word_index`` is not -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor
from torchmetrics import MetricCollection

from bertft.ner import EntityScore

Task = Literal["classification", "multilabel", "regression", "token"]
TASKS: tuple[str, ...] = ("classification", "multilabel", "regression", "token")

#: The validation metric that picks the best checkpoint, per task (higher is better for each).
PRIMARY_METRIC: dict[str, str] = {
    "classification": "acc",
    "multilabel": "f1_micro",
    "regression": "spearman",
    "token": "f1",
}

#: Label of positions that no loss or metric reads (PyTorch's ``ignore_index``).
IGNORE_INDEX = -100


def check_task(task: str, num_labels: int, label_names: list[str] | None) -> int:
    """Validates the task's label settings and returns the number of logits the head must produce."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    if task == "regression":
        return 1
    if num_labels < 2 and task in ("classification", "token"):
        raise ValueError(f"num_labels={num_labels}: {task} needs at least 2 labels")
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels}: multilabel needs at least 1 label")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(
            f"num_labels={num_labels} disagrees with the {len(label_names)} label names {label_names}: "
            "remove num_labels and let it follow the data, or fix it."
        )
    return num_labels


def check_logits(task: str, logits: Tensor) -> None:
    """Raises when the head's output does not fit the task (a per-token head on a sequence task, or the reverse)."""
    per_token = logits.dim() == 3
    if task == "token" and not per_token:
        raise ValueError(
            f"task 'token' needs one vector per token, but the head returned logits of shape {tuple(logits.shape)}. "
            "Use bertft.heads.TokenHead, or WeightedLayersHead with `reduce: none`."
        )
    if task != "token" and per_token:
        raise ValueError(
            f"task {task!r} needs one vector per text, but the head returned per-token logits of shape "
            f"{tuple(logits.shape)}. Use a pooling head such as MeanHead, or `task: token` for token classification."
        )


def loss(task: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy (per token for ``token``, skipping -100), binary cross-entropy per label, or mean squared error.

    Computed in float32.
    """
    check_logits(task, logits)
    logits = logits.float()
    if task == "token":
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)  # (B*T, C)
    if task == "classification":
        return F.cross_entropy(logits, labels)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.mse_loss(logits.squeeze(-1), labels.float())


def metrics(
    task: str, num_labels: int, threshold: float = 0.5, label_names: Sequence[str] | None = None
) -> MetricCollection:
    """The metrics reported for ``task``, keyed by the short names that follow ``val/`` and ``test/``.

    For ``token``: entity-level micro ``f1``, ``precision`` and ``recall`` (exact span and type, as seqeval computes
    them) and word-level tag accuracy ``acc``, all over the whole split at epoch end; ``label_names`` are the tags.
    """
    if task == "token":
        names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
        scores = {"f1": "f1", "precision": "precision", "recall": "recall", "acc": "accuracy"}
        return MetricCollection({key: EntityScore(names, score) for key, score in scores.items()})
    if task == "classification":
        return MetricCollection(
            {
                "acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_labels),
                "f1": torchmetrics.F1Score(task="multiclass", num_classes=num_labels, average="macro"),
                "mcc": torchmetrics.MatthewsCorrCoef(task="multiclass", num_classes=num_labels),
            }
        )
    if task == "multilabel":
        kw = {"task": "multilabel", "num_labels": num_labels, "threshold": threshold}
        return MetricCollection(
            {
                "f1_micro": torchmetrics.F1Score(**kw, average="micro"),
                "f1_macro": torchmetrics.F1Score(**kw, average="macro"),
            }
        )
    return MetricCollection(
        {
            "pearson": torchmetrics.PearsonCorrCoef(),
            "spearman": torchmetrics.SpearmanCorrCoef(),
            "mse": torchmetrics.MeanSquaredError(),
        }
    )


def metric_inputs(
    task: str, logits: Tensor, labels: Tensor, batch: dict[str, Tensor] | None = None
) -> tuple[Tensor, ...]:
    """Turns logits and labels into what the task's metrics take.

    For ``token`` the batch's ``row`` and ``word_index`` are needed too: the result is ``(N,)`` predicted and gold tag
    ids, sentence rows and word positions of the ``N`` words whose prediction this batch holds.
    """
    logits = logits.detach().float()
    if task == "token":
        if batch is None:
            raise ValueError("the token task's metrics need the batch (its `row` and `word_index`)")
        words = batch["word_index"]  # (B, T), -1 where no word's prediction is read
        read = words >= 0
        rows = batch["row"].unsqueeze(1).expand_as(words)  # (B, T)
        return logits.argmax(dim=-1)[read], labels[read], rows[read], words[read]
    if task == "classification":
        return logits.argmax(dim=-1), labels
    if task == "multilabel":
        return torch.sigmoid(logits), labels.long()
    return logits.squeeze(-1), labels.float()


def outputs(task: str, logits: Tensor, batch: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Prediction outputs: ``probs`` (softmax or per-label sigmoid) or, for regression, ``value``.

    For ``token``, one entry per word whose prediction the batch holds: ``row`` and ``word`` (the sentence and the
    word's position in it) and ``probs`` ``(N, num_labels)``.
    """
    logits = logits.detach().float()
    if task == "token":
        if batch is None:
            raise ValueError("token predictions need the batch (its `row` and `word_index`)")
        words = batch["word_index"]  # (B, T)
        read = words >= 0
        rows = batch["row"].unsqueeze(1).expand_as(words)  # (B, T)
        return {"row": rows[read], "word": words[read], "probs": torch.softmax(logits[read], dim=-1)}  # (N, C)
    if task == "classification":
        return {"probs": torch.softmax(logits, dim=-1)}
    if task == "multilabel":
        return {"probs": torch.sigmoid(logits)}
    return {"value": logits.squeeze(-1)}
