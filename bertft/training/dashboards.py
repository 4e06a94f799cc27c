"""How each logger shows what :class:`~bertft.training.tracking.Tracker` collects, in its own way.

W&B gets charts and tables, TensorBoard text tables, custom-scalar layouts and figures, CSV files beside
``metrics.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch import loggers as pl_loggers


def setup_dashboards(trainer: Trainer, pl_module: LightningModule) -> None:
    """W&B keeps each validation metric's best and last value in the summary; TensorBoard gets multi-line charts."""
    metrics = getattr(pl_module, "val_metrics", None)
    names = [*(metrics.keys() if metrics is not None else []), "val/loss"]
    for logger in trainer.loggers:
        if isinstance(logger, pl_loggers.WandbLogger) and trainer.is_global_zero:
            for name in names:  # the run summary keeps each validation metric's best value and its last one
                summary = "min,last" if name.endswith("loss") else "max,last"
                logger.experiment.define_metric(name, step_metric="trainer/global_step", summary=summary)
        elif isinstance(logger, pl_loggers.TensorBoardLogger) and trainer.is_global_zero:
            layout = {
                "layers": {"layer weights": ["Multiline", [r"layers/weight_\d+"]]},
                "learning curve": {"loss": ["Multiline", ["train/loss", "val/loss"]]},
            }
            logger.experiment.add_custom_scalars(layout)


def log_confusion(trainer: Trainer, counts: list[list[int]], names: list[str], step: int) -> None:
    """A confusion matrix, ``counts[gold][predicted]``, with label names: W&B chart, TensorBoard table, CSV rows."""
    rows = [[names[g], names[p], counts[g][p]] for g in range(len(names)) for p in range(len(names))]
    for logger in trainer.loggers:
        if isinstance(logger, pl_loggers.WandbLogger):
            import wandb

            table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
            chart = wandb.plot.plot_table(
                "wandb/confusion_matrix/v1",
                table,
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": f"Validation confusion matrix (step {step})"},
            )
            logger.experiment.log({"val/confusion_matrix": chart, "trainer/global_step": step})
        elif isinstance(logger, pl_loggers.TensorBoardLogger):
            header = "| gold \\ predicted | " + " | ".join(names) + " |\n|---" * (len(names) + 1) + "|\n"
            body = "".join(
                f"| **{n}** | " + " | ".join(map(str, r)) + " |\n" for n, r in zip(names, counts, strict=True)
            )
            logger.experiment.add_text("val/confusion_matrix", header + body, step)
        elif isinstance(logger, pl_loggers.CSVLogger):
            _append_csv(logger, "val_confusion_matrix.csv", ["step", "gold", "predicted", "count"], rows, step)


def log_table(trainer: Trainer, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
    """A table: ``wandb.Table``, a TensorBoard Markdown table, or ``<key>.csv`` beside ``metrics.csv``."""
    for logger in trainer.loggers:
        if isinstance(logger, pl_loggers.WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Table(columns=columns, data=rows), "trainer/global_step": step})
        elif isinstance(logger, pl_loggers.TensorBoardLogger):
            clean = [[str(v).replace("|", "\\|").replace("\n", " ") for v in r] for r in rows]
            text = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|\n"
            text += "".join("| " + " | ".join(r) + " |\n" for r in clean)
            logger.experiment.add_text(key, text, step)
        elif isinstance(logger, pl_loggers.CSVLogger):
            _append_csv(logger, key.replace("/", "_") + ".csv", ["step", *columns], rows, step)


def log_scatter(trainer: Trainer, pairs: list[list[float]], step: int) -> None:
    """``(gold, predicted)`` points: W&B scatter chart, TensorBoard figure (with matplotlib), CSV rows."""
    for logger in trainer.loggers:
        if isinstance(logger, pl_loggers.WandbLogger):
            import wandb

            table = wandb.Table(columns=["gold", "predicted"], data=pairs)
            chart = wandb.plot.scatter(table, "gold", "predicted", title=f"Validation: predicted vs gold (step {step})")
            logger.experiment.log({"val/predicted_vs_gold": chart, "trainer/global_step": step})
        elif isinstance(logger, pl_loggers.TensorBoardLogger):
            figure = _scatter_figure(pairs, step)
            if figure is not None:
                logger.experiment.add_figure("val/predicted_vs_gold", figure, step)
        elif isinstance(logger, pl_loggers.CSVLogger):
            _append_csv(logger, "val_predicted_vs_gold.csv", ["step", "gold", "predicted"], pairs, step)


def _scatter_figure(pairs: list[list[float]], step: int) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:  # optional: TensorBoard users install it for images
        return None
    gold, pred = zip(*pairs, strict=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(gold, pred, s=6, alpha=0.5)
    lo, hi = min(*gold, *pred), max(*gold, *pred)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)  # perfect predictions
    ax.set(xlabel="gold", ylabel="predicted", title=f"validation, step {step}")
    fig.tight_layout()
    return fig


def _append_csv(
    logger: pl_loggers.CSVLogger, filename: str, columns: list[str], rows: list[list[Any]], step: int
) -> None:
    path = Path(logger.log_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerows([step, *r] for r in rows)
