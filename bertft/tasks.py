"""What differs between tasks: the loss, the metrics, and how logits become predictions.

Sequence tasks (``classification``, ``multilabel``, ``regression``) take ``(batch, num_outputs)`` logits; the
``token`` task takes ``(batch, seq, num_labels)`` logits from a per-token head (``TokenHead``, or
``WeightedLayersHead`` with ``reduce: none``) and reads each word's prediction at its first sub-token, where the
batch's ``word_index`` is not -1.
"""

from __future__ import annotations

import math
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


def loss(task: str, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy (per token for ``token``, skipping -100), binary cross-entropy per label, or mean squared error.

    Computed in float32.

    Args:
        task: The task.
        logits: The head's output.
        labels: The batch's labels.
        weight: ``classification``: a weight per class (cross-entropy's ``weight``, a weighted mean over the batch);
            ``multilabel``: a weight per label on its positive term (``pos_weight``). ``None``: unweighted.
    """
    check_logits(task, logits)
    logits = logits.float()
    if task == "token":
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)  # (B*T, C)
    if task == "classification":
        return F.cross_entropy(logits, labels, weight=weight)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight)
    return F.mse_loss(logits.squeeze(-1), labels.float())


def check_class_weights(task: str, num_outputs: int, class_weights: str | Sequence[float] | None) -> None:
    """Refuses class weights for a task without classes, of the wrong length, or negative.

    Raises:
        ValueError: Naming the value and what fits.
    """
    if class_weights is None:
        return
    if task not in ("classification", "multilabel"):
        raise ValueError(f"model.class_weights applies to classification and multilabel, not to task {task!r}")
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"model.class_weights={class_weights!r}: give 'balanced', a list of weights, or null")
        return
    weights = [float(w) for w in class_weights]
    what = "class" if task == "classification" else "label (its positive term, pos_weight)"
    if len(weights) != num_outputs:
        raise ValueError(
            f"model.class_weights has {len(weights)} values but the data has {num_outputs} labels: give one weight "
            f"per {what}, in label_names order, or 'balanced'."
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(
            f"model.class_weights={weights}: weights must be finite, 0 or more, and not all 0 (one per {what})."
        )


def balanced_weights(task: str, counts: Sequence[int], total: int, label_names: Sequence[str]) -> Tensor:
    """Inverse-frequency weights over the training split.

    ``classification``: ``total / (num_classes * count)`` per class (scikit-learn's ``balanced``: a class's examples
    weigh as much in total as any other's). ``multilabel``: ``negatives / positives`` per label (BCE's ``pos_weight``).

    Raises:
        ValueError: A class with no training example, whose weight would be infinite.
    """
    empty = [name for name, n in zip(label_names, counts, strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"model.class_weights: balanced needs a training example of every class, and {empty} have none: give "
            "the weights as a list instead, or drop those classes from data.label_names."
        )
    n = torch.tensor(counts, dtype=torch.float)  # (C,)
    if task == "multilabel":
        return (total - n).clamp(min=1.0) / n
    return total / (len(counts) * n)


def merge_windows(rows: Tensor, logits: Tensor, pooling: str = "mean") -> tuple[Tensor, Tensor, Tensor]:
    """Merges the logits of a long text's windows into one row per text.

    Args:
        rows: ``(N,)`` the text (its ``row``) each window comes from.
        logits: ``(N, C)`` each window's logits.
        pooling: ``mean`` or ``max`` (element-wise) of the windows' logits.

    Returns:
        The texts' rows ``(D,)`` sorted, their merged logits ``(D, C)``, and the index of each text's first window
        ``(D,)`` (to read its label).
    """
    if pooling not in ("mean", "max"):
        raise ValueError(f"window_pooling={pooling!r}: choose 'mean' or 'max'")
    unique, inverse = torch.unique(rows, return_inverse=True)  # (D,), (N,)
    num_texts, num_windows = len(unique), len(rows)
    logits = logits.float()
    if pooling == "mean":
        summed = logits.new_zeros(num_texts, logits.shape[-1]).index_add_(0, inverse, logits)  # (D, C)
        merged = summed / torch.bincount(inverse, minlength=num_texts).unsqueeze(-1)  # (D, C)
    else:
        index = inverse.unsqueeze(-1).expand_as(logits)  # (N, C)
        merged = logits.new_full((num_texts, logits.shape[-1]), -math.inf).scatter_reduce_(0, index, logits, "amax")
    positions = torch.arange(num_windows, device=rows.device)  # (N,)
    first = torch.full((num_texts,), num_windows, device=rows.device).scatter_reduce_(0, inverse, positions, "amin")
    return unique, merged, first


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
