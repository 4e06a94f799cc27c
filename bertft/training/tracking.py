"""What a run logs besides the model's own losses and metrics, under the same names in every logger.

Learning rates, gradient norm, throughput, layer weights, and a picture of the validation predictions.

Both callbacks do nothing without a logger. Scalars are computed only on the steps that are logged
(``trainer.log_every_n_steps``), so they add no host-device synchronisation to the other steps.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.optim import Optimizer

from bertft.training.dashboards import log_confusion, log_scatter, log_table, setup_dashboards


def _logging_step(trainer: Trainer) -> bool:
    # Lightning's own rule for "this step's metrics are written" (evaluated before the step counter moves on).
    return trainer._logger_connector.should_update_logs


class LearningRateMonitor(pl_callbacks.LearningRateMonitor):
    """Lightning's learning-rate monitor, one series per parameter group (``lr/encoder``, ``lr/head``, ``lr/mix``...).

    Unlike Lightning's, it does nothing (rather than fail) when the trainer has no logger, so the CLI can always add it.

    Args:
        logging_interval: ``step`` or ``epoch``; ``null`` follows each scheduler's interval.
        log_momentum: Also log the optimiser's momentum (Adam's beta1).
        log_weight_decay: Also log each group's weight decay.
    """

    def __init__(
        self, logging_interval: str | None = "step", log_momentum: bool = False, log_weight_decay: bool = False
    ):
        super().__init__(logging_interval, log_momentum, log_weight_decay)  # type: ignore[arg-type]

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class Tracker(Callback):
    """Logs gradient norm, throughput and layer weights while training, and shows the validation predictions.

    - ``train/grad_norm``: L2 norm of all gradients, before clipping;
    - ``train/samples_per_sec`` and ``train/tokens_per_sec`` (real tokens, from ``attention_mask``), averaged since
      the previous logged step, for all devices together;
    - ``layers/weight_<i>``: a weighted-layer head's softmax weight of ``hidden_states[i]`` (0 is the embeddings), and
      at the end of training one W&B chart of every layer's weight over the steps;
    - after each validation: for classification a confusion matrix with the label names; for regression predicted
      against gold values; a table of misclassified examples. W&B gets charts and tables, TensorBoard text tables
      (and a scatter image when matplotlib is installed), CSV logs ``val_*.csv`` files beside ``metrics.csv``.

    Args:
        grad_norm: Log the gradient norm.
        throughput: Log samples and tokens per second.
        layer_weights: Log a weighted-layer head's layer weights.
        predictions: Log the confusion matrix or scatter after each validation.
        misclassified: How many misclassified validation examples to show (0: none).
        max_points: Most points in a regression scatter.
    """

    def __init__(
        self,
        grad_norm: bool = True,
        throughput: bool = True,
        layer_weights: bool = True,
        predictions: bool = True,
        misclassified: int = 10,
        max_points: int = 1000,
    ) -> None:
        self.grad_norm = grad_norm
        self.throughput = throughput
        self.layer_weights = layer_weights
        self.predictions = predictions
        self.misclassified = misclassified
        self.max_points = max_points
        self._weights: list[tuple[int, list[float]]] = []  # (step, weights) at each logged step
        self._reset_window()
        self._confusion: Tensor | None = None
        self._pairs: list[Tensor] = []
        self._wrong: list[list[Any]] = []

    def _active(self, trainer: Trainer) -> bool:
        return bool(trainer.loggers) and not trainer.fast_dev_run and not trainer.sanity_checking

    # --- training ----------------------------------------------------------------------------------------------

    def _reset_window(self) -> None:
        self._t0: float | None = None
        self._elapsed = 0.0
        self._samples = 0
        self._tokens: Tensor | int = 0  # stays on the device until a logged step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Starts the clock and counts the batch's samples and real tokens (without a host sync)."""
        if not (self.throughput and self._active(trainer)):
            return
        if self._t0 is None:
            self._t0 = time.perf_counter()
        mask = batch["attention_mask"]
        self._samples += mask.shape[0]
        self._tokens = self._tokens + mask.sum()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        """Logs the total gradient norm on logged steps."""
        if not (self.grad_norm and self._active(trainer) and _logging_step(trainer)):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )  # stays on device
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """On logged steps: throughput over the steps since the last one, and the layer weights."""
        if not (self._active(trainer) and _logging_step(trainer)):
            return
        if self.throughput and self._t0 is not None:
            elapsed = self._elapsed + time.perf_counter() - self._t0
            world = trainer.world_size  # every rank runs the same batch size
            tokens = float(self._tokens)  # the one host sync, once per logging interval
            pl_module.log("train/samples_per_sec", world * self._samples / elapsed, on_step=True, on_epoch=False)
            pl_module.log("train/tokens_per_sec", world * tokens / elapsed, on_step=True, on_epoch=False)
            self._reset_window()
        head = getattr(pl_module, "head", None)
        if self.layer_weights and hasattr(head, "layer_weights"):
            weights = head.layer_weights
            layers = getattr(head, "layers", range(len(weights)))
            for i, w in zip(layers, weights, strict=True):
                pl_module.log(f"layers/weight_{i}", w, on_step=True, on_epoch=False)
            self._weights.append((trainer.global_step, weights))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stops the throughput clock (validation time is not training time) and prepares the accumulators."""
        if self._t0 is not None:
            self._elapsed += time.perf_counter() - self._t0
            self._t0 = None
        self._confusion = None
        self._pairs = []
        self._wrong = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Sets up dashboards: best-value summaries for W&B, one multi-line layer chart for TensorBoard."""
        self._weights = []
        self._reset_window()
        if not self._active(trainer):
            return
        setup_dashboards(trainer, pl_module)

    @rank_zero_only
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Draws every layer's weight over the steps as one W&B chart."""
        if not (self._weights and self._active(trainer)):
            return
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, pl_loggers.WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        layers = getattr(pl_module.head, "layers", range(len(self._weights[0][1])))
        chart = wandb.plot.line_series(
            xs=[step for step, _ in self._weights],
            ys=[list(ws) for ws in zip(*(w for _, w in self._weights), strict=True)],
            keys=["embeddings" if i == 0 else f"layer {i}" for i in layers],
            title="Layer weights over training (softmax; 0 = embeddings)",
            xname="step",
        )
        for logger in wandb_loggers:
            logger.experiment.log({"layers/weights": chart, "trainer/global_step": trainer.global_step})

    # --- validation --------------------------------------------------------------------------------------------

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        """Accumulates the confusion matrix (on the device) or the scatter points, and a few misclassified rows."""
        task = getattr(pl_module, "task", None)
        if not (self.predictions and self._active(trainer) and isinstance(outputs, Tensor) and "labels" in batch):
            return
        labels = batch["labels"]
        if task in ("classification", "token"):  # token: one cell per labelled sub-token
            n = outputs.shape[-1]
            preds = outputs.argmax(-1)  # (B,), or (B, T) for token classification
            # Cell gold * n + predicted; ignored positions (label -100) go to an extra bin n * n, dropped: no sync.
            cells = torch.where(labels >= 0, labels * n + preds, n * n).view(-1)  # (B*T,)
            counts = torch.bincount(cells, minlength=n * n + 1)[: n * n].view(n, n)  # (gold, predicted)
            self._confusion = counts if self._confusion is None else self._confusion + counts
            if outputs.dim() == 2 and len(self._wrong) < self.misclassified:
                self._collect_wrong(trainer, outputs, preds, labels, batch)
        elif task == "regression" and sum(len(p) for p in self._pairs) < self.max_points:
            self._pairs.append(torch.stack([labels.float().view(-1), outputs.detach().float().view(-1)], 1))

    def _collect_wrong(self, trainer: Trainer, logits: Tensor, preds: Tensor, labels: Tensor, batch: Any) -> None:
        # Host copies only until enough examples are found: usually the first batch or two.
        wrong = (preds != labels).nonzero().view(-1).tolist()[: self.misclassified - len(self._wrong)]
        if not wrong:
            return
        probs = logits.softmax(-1)
        texts = _texts(trainer, batch, wrong)
        names = getattr(trainer.lightning_module, "label_names", [])
        for text, i in zip(texts, wrong, strict=True):
            gold, pred = int(labels[i]), int(preds[i])
            self._wrong.append([text, _name(names, gold), _name(names, pred), round(float(probs[i, pred]), 4)])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs the confusion matrix (summed over devices) or the scatter, and the misclassified examples."""
        if not (self.predictions and self._active(trainer)):
            return
        confusion = self._confusion
        if confusion is not None and trainer.world_size > 1:
            confusion = trainer.strategy.reduce(confusion, reduce_op="sum")
        if trainer.is_global_zero:
            step = trainer.global_step
            names = getattr(pl_module, "label_names", [])
            if confusion is not None:
                log_confusion(trainer, confusion.tolist(), [_name(names, i) for i in range(len(confusion))], step)
            if self._wrong:
                log_table(trainer, "val/misclassified", ["text", "gold", "predicted", "confidence"], self._wrong, step)
            if self._pairs:
                pairs = torch.cat(self._pairs)[: self.max_points].tolist()
                log_scatter(trainer, pairs, step)


# --- helpers ----------------------------------------------------------------------------


def _name(names: list[str], i: int) -> str:
    return names[i] if i < len(names) else str(i)


def _texts(trainer: Trainer, batch: Any, indices: list[int]) -> list[str]:
    """The original text of batch rows (from the validation file), or the decoded tokens."""
    data = trainer.datamodule
    if "row" in batch and hasattr(data, "raw_split") and hasattr(data, "text_columns"):
        frame = data.raw_split("val")
        return [" || ".join(str(frame.iloc[int(batch["row"][i])][c]) for c in data.text_columns) for i in indices]
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is None:
        return ["" for _ in indices]
    return [tokenizer.decode(batch["input_ids"][i], skip_special_tokens=True) for i in indices]
