"""Training in the test's own process: a quiet CPU trainer, batches of real rows, the losses a run logged."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU ``Trainer`` that writes nothing and prints no bar or summary; ``kwargs`` add to or override that."""
    defaults: dict[str, Any] = dict(accelerator="cpu", logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def make_batches(encoder: Path | str, rows: Sequence[tuple[str, Any]], batch_size: int = 8) -> DataLoader:
    """Batches of (text, label) rows tokenised by the encoder's tokenizer (up to 64 tokens), in order."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder)

    def collate(batch: list[tuple[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [t for t, _ in batch]
        encoded = dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
        encoded["labels"] = torch.tensor([y for _, y in batch])
        return encoded

    return DataLoader(list(rows), batch_size=batch_size, collate_fn=collate)


def fit(model: L.LightningModule, loader: DataLoader, steps: int) -> L.Trainer:
    """Trains ``steps`` optimiser steps on CPU with nothing written to disk; returns the trainer."""
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0)
    trainer.fit(model, loader)
    return trainer


def train_losses(root: Path) -> list[float]:
    """The ``train/loss`` values of the first ``metrics.csv`` (a CSV logger's) under ``root``, in order."""
    metrics = next(root.rglob("metrics.csv"))
    with open(metrics, encoding="utf-8") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
