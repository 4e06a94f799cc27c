"""``PredictionWriter``: one output row per input row, in the input's order, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from bertft import tasks
from bertft.io import atomic_writer
from bertft.ner import entities

_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to a CSV or JSONL file, next to the input texts.

    The model's ``predict_step`` returns ``{"row": (B,), "probs": (B, L)}`` (classification, multilabel) or
    ``{"row": (B,), "value": (B,)}`` (regression); the writer reads ``task``, ``label_names`` and ``threshold`` from
    the model. Output columns: the input text column(s), ``prediction``, then ``prob_<label>`` per class.

    For the ``token`` task (``{"row", "word", "probs"}`` per word) the file has one row per sentence: ``tokens`` (the
    words), ``tags`` (one predicted tag per word) and ``entities`` (``{"text", "type", "start", "end"}``, words
    ``start`` to ``end`` exclusive, re-joined from the IOB tags). JSONL by default; in CSV each cell holds JSON.

    Batches arrive sorted by length, and under DDP spread over ranks with padding repeats; the writer gathers them,
    drops repeated rows and sorts by ``row``, so the file follows the input file line for line.

    Args:
        output_file: ``.csv`` or ``.jsonl`` path; default ``predictions.csv`` in the trainer's log folder.
        write_interval: Only ``"epoch"``: restoring the input order needs every batch.
    """

    def __init__(self, output_file: str | None = None, write_interval: Literal["epoch"] = "epoch") -> None:
        if write_interval != "epoch":
            raise ValueError(f"write_interval must be 'epoch' (input order needs every batch), got {write_interval!r}")
        super().__init__(write_interval)
        if output_file is not None and Path(output_file).suffix.lower() not in _FORMATS:
            raise ValueError(f"output_file {output_file!r} must end in .csv or .jsonl")
        self.output_file = output_file
        self._parts: list[dict[str, Tensor]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Starts a fresh collection."""
        self._parts = []

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keeps the batch's outputs on the CPU (also when ``trainer.predict(return_predictions=False)``)."""
        if outputs is not None:
            self._parts.append({k: v.detach().cpu() for k, v in outputs.items() if isinstance(v, Tensor)})

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gathers every rank's outputs and writes the file from rank 0."""
        parts = self._parts
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, parts)
            parts = [p for rank_parts in gathered for p in rank_parts]
        self._parts = []
        path = self._path(trainer)  # every rank: `trainer.log_dir` broadcasts, and rank 0 alone would hang the others
        if not trainer.is_global_zero:
            return
        if parts and "logits" in parts[0]:  # windows of long texts: one prediction per text
            rows, logits = torch.cat([p["row"] for p in parts]), torch.cat([p["logits"] for p in parts])
            pooling = pl_module.hparams.get("window_pooling", "mean")
            text_rows, merged_logits, _ = tasks.merge_windows(rows, logits, pooling)
            parts = [{"row": text_rows, **tasks.outputs(pl_module.task, merged_logits)}]
        merged = merge_outputs(parts)
        datamodule = getattr(trainer, "datamodule", None)
        inputs = datamodule.raw_split("predict") if hasattr(datamodule, "raw_split") else None
        text_columns = list(getattr(datamodule, "text_columns", []))
        if pl_module.task == "token":
            if inputs is None:
                raise ValueError("token predictions need the data module's words (`raw_split`) to be written")
            frame = token_prediction_frame(merged, list(pl_module.label_names), inputs["tokens"].tolist())
            if path.suffix.lower() != ".jsonl":
                frame = frame.map(lambda cell: json.dumps(cell, ensure_ascii=False))
            write_atomically(frame, path)
            rank_zero_info(f"Wrote {len(frame)} tagged sentences to {path}")
            return
        frame = prediction_frame(
            merged,
            task=pl_module.task,
            label_names=list(pl_module.label_names),
            threshold=float(getattr(pl_module, "threshold", 0.5)),
            inputs=inputs[text_columns] if inputs is not None else None,
            label_delimiter=getattr(datamodule, "label_delimiter", None),
            jsonl=path.suffix.lower() == ".jsonl",
        )
        write_atomically(frame, path)
        rank_zero_info(f"Wrote {len(frame)} predictions to {path}")

    def _path(self, trainer: L.Trainer) -> Path:
        if self.output_file is not None:
            return Path(self.output_file)
        token = getattr(trainer.lightning_module, "task", None) == "token"
        return Path(trainer.log_dir or trainer.default_root_dir) / ("predictions.jsonl" if token else "predictions.csv")

    def write_on_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Unused: the input order can only be restored once every batch is in."""

    def write_on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Unused: :meth:`on_predict_epoch_end` writes, also when predictions are not returned."""


def merge_outputs(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenates batch outputs, keeps the first of any repeated ``row`` and sorts by ``row``.

    Token outputs (with a ``word`` key) are keyed by ``(row, word)`` instead: one entry per word.
    """
    if not parts:
        return {}
    merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    rows = merged["row"]
    if "word" in merged:  # token task: sort and de-duplicate by (row, word)
        rows = rows * (int(merged["word"].max()) + 1) + merged["word"]
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[1:] = sorted_rows[1:] != sorted_rows[:-1]  # DistributedSampler-style padding repeats rows
    keep = order[first]
    return {key: value[keep] for key, value in merged.items()}


def prediction_frame(
    outputs: dict[str, Tensor],
    *,
    task: str,
    label_names: list[str],
    threshold: float = 0.5,
    inputs: pd.DataFrame | None = None,
    label_delimiter: str | None = None,
    jsonl: bool = False,
) -> pd.DataFrame:
    """The output table: input texts, ``prediction`` and ``prob_<label>`` columns, one row per predicted ``row``.

    Args:
        outputs: :func:`merge_outputs` result.
        task: ``classification``, ``multilabel`` or ``regression``.
        label_names: Class names, in the order of the ``probs`` columns.
        threshold: Multilabel decision threshold on each probability.
        inputs: The predict file's text columns, indexed by ``row``.
        label_delimiter: Joins multilabel predictions in CSV; ``None`` writes a JSON list.
        jsonl: Multilabel predictions stay lists (JSONL) instead of being joined into text (CSV).
    """
    rows = outputs["row"].tolist() if outputs else []
    frame = inputs.iloc[rows].reset_index(drop=True) if inputs is not None else pd.DataFrame(index=range(len(rows)))
    if task == "regression":
        frame["prediction"] = outputs["value"].float().reshape(-1).tolist() if rows else []
        return frame
    probs = outputs["probs"].float() if rows else torch.zeros(0, len(label_names))  # (N, L)
    if task == "multilabel":
        chosen = [[label_names[j] for j in torch.nonzero(p > threshold).flatten().tolist()] for p in probs]
        if jsonl:
            frame["prediction"] = chosen
        else:
            frame["prediction"] = [label_delimiter.join(c) if label_delimiter else json.dumps(c) for c in chosen]
    else:
        frame["prediction"] = [label_names[j] for j in probs.argmax(dim=-1).tolist()]
    for j, name in enumerate(label_names):
        frame[f"prob_{name}"] = probs[:, j].tolist()
    return frame


def token_prediction_frame(
    outputs: dict[str, Tensor], label_names: list[str], sentences: list[list[str]]
) -> pd.DataFrame:
    """One row per sentence: ``tokens``, ``tags`` (one per word) and ``entities`` re-joined from the tags.

    Args:
        outputs: :func:`merge_outputs` of token outputs: ``row``, ``word`` and ``probs``, sorted by ``(row, word)``.
        label_names: Tag names, in the order of the ``probs`` columns.
        sentences: The words of every input sentence, indexed by ``row``.

    Raises:
        ValueError: A sentence whose words did not all get a prediction (windows not merged back).
    """
    rows = outputs["row"].tolist() if outputs else []
    tag_ids = outputs["probs"].argmax(dim=-1).tolist() if outputs else []
    tags_of: dict[int, list[str]] = {}
    for row, tag in zip(rows, tag_ids, strict=True):  # sorted by (row, word): tags arrive in word order
        tags_of.setdefault(row, []).append(label_names[tag])
    records = []
    for row, tags in tags_of.items():
        tokens = list(sentences[row])
        if len(tags) != len(tokens):
            raise ValueError(f"sentence {row}: {len(tokens)} words but {len(tags)} predicted tags")
        spans = [{"text": " ".join(tokens[e.start : e.end]), "type": e.type, "start": e.start, "end": e.end}
                 for e in entities(tags)]  # fmt: skip
        records.append({"tokens": tokens, "tags": tags, "entities": spans})
    return pd.DataFrame.from_records(records, columns=["tokens", "tags", "entities"])


def write_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Writes ``frame`` to a temporary file beside ``path`` and renames it, so ``path`` is never half-written."""
    with atomic_writer(path, newline="") as f:
        if path.suffix.lower() == ".jsonl":
            frame.to_json(f, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_csv(f, index=False)
