"""What differs between tasks: the loss, the metrics, and how logits become predictions."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor
from torchmetrics import MetricCollection

Task = Literal["classification", "multilabel", "regression"]
TASKS: tuple[str, ...] = ("classification", "multilabel", "regression")

#: The validation metric that picks the best checkpoint, per task (higher is better for each).
PRIMARY_METRIC: dict[str, str] = {"classification": "acc", "multilabel": "f1_micro", "regression": "spearman"}


def check_task(task: str, num_labels: int, label_names: list[str] | None) -> int:
    """Validates the task's label settings and returns the number of logits the head must produce."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    if task == "regression":
        return 1
    if num_labels < 2 and task == "classification":
        raise ValueError(f"num_labels={num_labels}: classification needs at least 2 labels")
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels}: multilabel needs at least 1 label")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(
            f"num_labels={num_labels} disagrees with the {len(label_names)} label names {label_names}: "
            "remove num_labels and let it follow the data, or fix it."
        )
    return num_labels


def loss(task: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy, binary cross-entropy per label, or mean squared error; computed in float32."""
    logits = logits.float()
    if task == "classification":
        return F.cross_entropy(logits, labels)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.mse_loss(logits.squeeze(-1), labels.float())


def metrics(task: str, num_labels: int, threshold: float = 0.5) -> MetricCollection:
    """The metrics reported for ``task``, keyed by the short names that follow ``val/`` and ``test/``."""
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


def metric_inputs(task: str, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Turns logits and labels into what the task's metrics take."""
    logits = logits.detach().float()
    if task == "classification":
        return logits.argmax(dim=-1), labels
    if task == "multilabel":
        return torch.sigmoid(logits), labels.long()
    return logits.squeeze(-1), labels.float()


def outputs(task: str, logits: Tensor) -> dict[str, Tensor]:
    """Prediction outputs: ``probs`` (softmax or per-label sigmoid) or, for regression, ``value``."""
    logits = logits.detach().float()
    if task == "classification":
        return {"probs": torch.softmax(logits, dim=-1)}
    if task == "multilabel":
        return {"probs": torch.sigmoid(logits)}
    return {"value": logits.squeeze(-1)}
