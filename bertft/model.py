"""The LightningModule: a Hugging Face encoder, a pluggable head, the task's loss and metrics, the optimiser."""

from __future__ import annotations

import importlib
import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer

from bertft import tasks
from bertft.adapters import PeftSettings, count_parameters, frozen_state_keys, settings_from, wrap_encoder
from bertft.encoder import EncoderOutput, adapt_encoder, as_features, forward_arguments, load_encoder, run_encoder
from bertft.heads import Head, MeanHead
from bertft.optim import Schedule, check_layer_lr_decay, make_optimizer, parameter_groups, warmup_then_decay
from bertft.tasks import Task


def head_from_config(config: dict[str, Any]) -> Head:
    """Rebuilds a head from ``{"class_path": ..., "init_args": {...}}`` (a checkpoint's or a YAML's form).

    Raises:
        ValueError: The class path does not import, or does not name a :class:`~bertft.heads.Head` subclass.
    """
    class_path = config.get("class_path", "")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"head class_path {class_path!r} does not import ({err}). Give a full dotted path such as "
            "bertft.heads.MeanHead, and make sure the package that defines your head is installed."
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Head)):
        raise ValueError(f"head class_path {class_path!r} is not a subclass of bertft.heads.Head")
    return cls(**config.get("init_args", {}))


class FineTuner(L.LightningModule):
    """Fine-tunes a BERT-family encoder with a pluggable head.

    Args:
        encoder: Encoder to fine-tune: ``minilm`` (the packaged all-MiniLM-L6-v2, offline), a Hugging Face hub name or
            a local folder.
        head: What turns the encoder's outputs into logits (default: :class:`~bertft.heads.MeanHead`). Sized by the
            encoder.
        task: ``classification`` (one label per text), ``multilabel`` (any number of labels), ``regression``, or
            ``token`` (one label per word, with a per-token head: ``TokenHead`` or
            ``WeightedLayersHead(reduce="none")``; data from :class:`~bertft.data.TokenDataModule`).
        num_labels: Number of labels; the CLI takes it from the data.
        label_names: Label names in logit order; the CLI takes them from the data and checkpoints keep them.
        lr: Peak learning rate of the encoder (the top layer under layer-wise decay).
        head_lr: Peak learning rate of the head (default: ``lr``).
        mix_lr: Learning rate of a weighted-layer head's mixing weights (and scale), which get no weight decay. High
            by design: at 1e-3 they hardly move in a fine-tuning run's few hundred steps; 1e-1 learned a real mix
            and scored 0.035 Spearman higher on STS-B (RESULTS.md, "The weighted-layers head's mix_lr").
        weight_decay: AdamW weight decay; biases, norms and embeddings never decay.
        layer_lr_decay: Layer-wise learning-rate decay: layer ``k`` of ``L`` trains at ``lr * decay ** (L + 1 - k)``,
            the embeddings at ``lr * decay ** (L + 1)``; 1.0 turns it off. Refused on encoders whose layers share
            weights (ALBERT), where no layer has weights of its own.
        warmup_ratio: Fraction of the optimiser steps spent warming up linearly from 0.
        schedule: After warmup: ``linear`` or ``cosine`` decay to 0, or ``constant``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        fused: Use the fused AdamW kernel; ``null`` picks it wherever the device supports it.
        freeze_encoder: Train only the head (linear probing); the encoder's weights stay bit-identical and it runs
            without dropout and without building a graph (:func:`~bertft.encoder.as_features`).
        gradient_checkpointing: Recompute activations in the backward pass to save memory (refused on encoders for
            which transformers does not implement it, such as ALBERT).
        output_attentions: Load the encoder with eager attention so :meth:`encode` can return attention maps.
        threshold: Probability above which a label is predicted (multilabel).
        trust_remote_code: Run model code that ships with a hub checkpoint. Off unless you trust its author.
        encoder_dropout: Dropout probability for every dropout in the encoder (hidden and attention); ``null`` keeps
            the checkpoint's own (0.1 for BERT). 0 makes training deterministic given the data order, and is a speed
            knob that changes the recipe (``configs/speed/fast.yaml``; measured effect in BENCHMARKS.md).
        freeze_embeddings: Keep the encoder's embedding layer (token, position and segment embeddings and their layer
            norm; the token matrix alone is 11.7 M of MiniLM's 22.7 M weights) fixed while its transformer layers
            train. A recipe change that saves the embeddings' gradients, their AdamW update and state (3 x 47 MB for
            MiniLM) and the first layer's input gradient (``configs/speed/fast.yaml``).
        class_weights: Weigh the loss by class, against class imbalance: ``balanced`` (inverse frequency over the
            training split, computed once when ``fit`` starts; for multilabel, each label's negatives / positives as
            its ``pos_weight``), a list of one weight per class in ``label_names`` order (multilabel: per label's
            positive term), or ``null`` (unweighted). Checkpoints keep the weights.
        window_pooling: With ``data.long_texts: windows``: how a long text's windows merge into its one prediction
            in validation, test and predict: ``mean`` or ``max`` of their logits.
        peft: Parameter-efficient fine-tuning (:class:`~bertft.adapters.PeftSettings`): LoRA adapters on the
            encoder, whose own weights stay frozen; the head trains fully. Checkpoints then hold only the adapters,
            the head and bertft's state, and loading one rebuilds the encoder from ``encoder``. ``null``: full
            fine-tuning. ``configs/peft/lora.yaml`` turns it on.
    """

    def __init__(
        self,
        encoder: str = "minilm",
        head: Head | None = None,
        task: Task = "classification",
        num_labels: int = 2,
        label_names: list[str] | None = None,
        lr: float = 5e-5,
        head_lr: float | None = None,
        mix_lr: float = 1e-1,
        weight_decay: float = 0.01,
        layer_lr_decay: float = 1.0,
        warmup_ratio: float = 0.06,
        schedule: Schedule = "linear",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
        freeze_encoder: bool = False,
        gradient_checkpointing: bool = False,
        output_attentions: bool = False,
        threshold: float = 0.5,
        trust_remote_code: bool = False,
        encoder_dropout: float | None = None,
        freeze_embeddings: bool = False,
        class_weights: Literal["balanced"] | list[float] | None = None,
        window_pooling: Literal["mean", "max"] = "mean",
        peft: PeftSettings | None = None,
    ) -> None:
        super().__init__()
        if isinstance(head, dict):  # a checkpoint saved from Python keeps the head as its config
            head = head_from_config(head)
        head = head if head is not None else MeanHead()
        num_outputs = tasks.check_task(task, num_labels, label_names)
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
        if encoder_dropout is not None and not 0.0 <= encoder_dropout < 1.0:
            raise ValueError(f"encoder_dropout={encoder_dropout} must be in [0, 1), or null for the checkpoint's own")
        tasks.check_class_weights(task, num_outputs, class_weights)
        if window_pooling not in ("mean", "max"):
            raise ValueError(f"window_pooling={window_pooling!r}: choose 'mean' or 'max'")
        peft = settings_from(peft)  # a checkpoint keeps it as a dict
        if peft is not None and freeze_encoder:
            raise ValueError("model.peft and model.freeze_encoder: LoRA already freezes the encoder; use one of them")

        self.save_hyperparameters(ignore=["head"])
        self.hparams["head"] = head.config
        self.hparams["peft"] = peft.as_dict() if peft is not None else None  # plain values: checkpoints hold no class
        if label_names is not None:
            self.hparams["label_names"] = list(label_names)

        self.encoder = load_encoder(
            encoder,
            with_pooler=head.needs_pooler_output,
            with_attentions=output_attentions or head.needs_attentions,
            trust_remote_code=trust_remote_code,
        )
        config = self.encoder.config
        try:
            head.build(config.hidden_size, config.num_hidden_layers, num_outputs, config.num_attention_heads)
        except ValueError as err:
            raise ValueError(f"head {head.config['class_path']} does not fit encoder {encoder!r}: {err}") from err
        self.head = head
        self._accepted = forward_arguments(self.encoder)
        check_layer_lr_decay(self.encoder, layer_lr_decay)  # here, not at the first optimiser step

        adapt_encoder(
            self.encoder,
            gradient_checkpointing=gradient_checkpointing,
            dropout=encoder_dropout,
            freeze_embeddings=freeze_embeddings,
            freeze=freeze_encoder,
        )
        if peft is not None:  # after adapt_encoder: its dropout setting must not reach the adapters' own dropout
            self.encoder = wrap_encoder(self.encoder, peft, config.num_hidden_layers)

        metrics = tasks.metrics(task, num_outputs, threshold, self.label_names)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        if class_weights is not None:
            # A buffer, so checkpoints carry the weights; all zeros until `balanced` is computed from the data.
            given = torch.zeros(num_outputs) if class_weights == "balanced" else torch.tensor(class_weights)
            self.register_buffer("class_weight", given.float())
        self._windows: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}  # eval windows waiting to be merged

    # --- what users read -----------------------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """``classification``, ``multilabel``, ``regression`` or ``token``."""
        return self.hparams["task"]

    @property
    def label_names(self) -> list[str]:
        """Label names in logit order (numbers as strings when no names were given; empty for regression)."""
        if self.task == "regression":
            return []
        names = self.hparams.get("label_names")
        return list(names) if names else [str(i) for i in range(self.hparams["num_labels"])]

    @property
    def threshold(self) -> float:
        """Multilabel decision threshold."""
        return self.hparams["threshold"]

    @property
    def monitor(self) -> str:
        """The validation metric that selects the best checkpoint (higher is better)."""
        return "val/" + tasks.PRIMARY_METRIC[self.task]

    # --- forward ---------------------------------------------------------------------------------------------------

    def encode(self, batch: dict[str, Tensor], attentions: bool = False, hidden_states: bool = False) -> EncoderOutput:
        """Runs the encoder alone and returns all the outputs asked for, for analysis.

        Args:
            batch: Tokenizer output (``input_ids``, ``attention_mask``, ...).
            attentions: Also return attention maps, ``(batch, heads, seq, seq)`` per layer. The encoder is switched to
                eager attention for this, and stays so (``sdpa`` returns none, and is faster: pass
                ``output_attentions=True`` at construction, or switch back with
                ``model.encoder.set_attn_implementation("sdpa")``).
            hidden_states: Also return the embeddings and every layer's output.
        """
        if attentions and self.encoder.config._attn_implementation != "eager":
            self.encoder.set_attn_implementation("eager")
        return run_encoder(
            self.encoder,
            batch,
            self._accepted,
            hidden_states=hidden_states or self.head.needs_hidden_states,
            attentions=attentions or self.head.needs_attentions,
            pooler=self.head.needs_pooler_output,
        )

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Returns the head's logits for a tokenised batch."""
        with as_features(self.encoder, self.hparams["freeze_encoder"]):  # fixed features: no grad, no dropout
            outputs = run_encoder(
                self.encoder,
                batch,
                self._accepted,
                hidden_states=self.head.needs_hidden_states,
                attentions=self.head.needs_attentions,
                pooler=self.head.needs_pooler_output,
            )
        return self.head(outputs, batch["attention_mask"])

    # --- Lightning hooks -------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """With ``peft``: prints the trainable parameters and their share, and logs them as hyperparameters."""
        if self.hparams.get("peft") is None:
            return
        trainable, total = count_parameters(self)
        share = trainable / total
        settings = self.hparams["peft"]
        # auto and all-linear resolved; all-linear resolves to one full path per layer, so name each kind once
        resolved = self.encoder.peft_config["default"].target_modules
        targets = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in resolved}))
        rank_zero_info(
            f"peft: {settings['method']} r={settings['r']} on {targets}: {trainable:,} of "
            f"{total:,} parameters train ({100 * share:.2f}%; adapters and head), the encoder's own stay frozen"
        )
        for logger in self.loggers:  # rank zero only: Lightning's loggers log there alone
            logger.log_hyperparams({"params/trainable": trainable, "params/total": total, "params/share": share})

    def base_never_trains(self) -> bool:
        """Whether the encoder's own weights stay as loaded for the whole run: under LoRA and linear probing."""
        return self.hparams.get("peft") is not None or bool(self.hparams.get("freeze_encoder"))

    def checkpoint_left_out(self) -> set[str]:
        """The ``state_dict`` keys a checkpoint leaves out: the frozen encoder's when it never trains, else none.

        The one rule both saving and the disk check before a fit (:func:`bertft.training.checks.checkpoint_bytes`)
        follow, so the space asked for is the space written.
        """
        return frozen_state_keys(self.encoder, "encoder.") if self.base_never_trains() else set()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With ``peft`` or ``freeze_encoder``: leaves the frozen encoder out; keeps what trains and names the base.

        A linear probe's checkpoint shrinks from the whole encoder to its head (271 MB to tens of kB on MiniLM).
        """
        frozen = self.checkpoint_left_out()
        if not frozen:
            return
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["bertft_adapters"] = {"base_encoder": self.hparams["encoder"], "left_out": len(frozen)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With ``peft`` or ``freeze_encoder``: fills in the frozen encoder's weights from the base it was built from.

        So the strict load that follows checks every adapter and head weight, and resuming works as for full
        fine-tuning. A checkpoint that holds the encoder (saved before bertft left it out) keeps its own copy.
        """
        left_out = self.checkpoint_left_out()
        if not left_out:
            return
        state, own = checkpoint["state_dict"], self.state_dict()
        for key in left_out:
            if key in own:  # non-persistent buffers are in neither
                state.setdefault(key, own[key])

    def setup(self, stage: str) -> None:
        """Computes ``balanced`` class weights from the data's training split when ``fit`` starts.

        A resumed run computes them again from the same split, then the checkpoint's copy is loaded over them.
        """
        if stage != "fit" or self.hparams.get("class_weights") != "balanced":
            return
        data = self.trainer.datamodule if self.trainer is not None else None
        if not hasattr(data, "label_counts"):
            raise ValueError("class_weights: balanced needs a bertft data module (its label_counts) to count classes")
        counts, total = data.label_counts(), data.num_train_examples()
        weights = tasks.balanced_weights(self.task, counts, total, self.label_names)
        self.class_weight.copy_(weights)
        shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(self.label_names, weights.tolist(), strict=True))
        rank_zero_info(f"class weights (balanced over {total:,} training examples): {shown}")

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        weight = getattr(self, "class_weight", None)
        if weight is None:
            return tasks.loss(self.task, logits, labels)
        # `balanced` before it is computed (validate with no fit) is all zeros: then every class weighs 1, which is
        # the unweighted loss. Chosen on the device: `bool(weight.any())` would wait for the GPU at every step.
        weight = torch.where(weight.any(), weight, torch.ones_like(weight))
        return tasks.loss(self.task, logits, labels, weight=weight)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One optimiser step's loss."""
        loss = self._loss(self(batch), batch["labels"])
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch)
        size = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", self._loss(logits, batch["labels"]), batch_size=size, sync_dist=True)
        if "window" in batch:  # windows of long texts: metrics wait for every window of a text (epoch end)
            self._windows.setdefault(stage, []).append((batch["row"], logits.detach().float(), batch["labels"]))
            return logits.detach()
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(*tasks.metric_inputs(self.task, logits, batch["labels"], batch))
        self.log_dict(metrics, batch_size=size, prog_bar=stage == "val")
        return logits.detach()

    def _log_merged_windows(self, stage: str) -> None:
        """Merges each text's windows into one prediction and logs the metrics over texts, not windows.

        The data module puts every window of a text on one rank, so each rank merges its own texts; computing the
        metrics then syncs them across ranks, counting each text once.
        """
        parts = self._windows.pop(stage, [])
        if not parts:
            return
        rows, logits, labels = (torch.cat(p) for p in zip(*parts, strict=True))
        _, merged, first = tasks.merge_windows(rows, logits, self.hparams["window_pooling"])
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(*tasks.metric_inputs(self.task, merged, labels[first]))
        values = metrics.compute()
        metrics.reset()
        self.log_dict(values, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        """Logs the metrics of windowed long texts, merged per text."""
        self._log_merged_windows("val")

    def on_test_epoch_end(self) -> None:
        """Logs the metrics of windowed long texts, merged per text."""
        self._log_merged_windows("test")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Accumulates validation metrics (logged as ``val/...``); returns the logits for callbacks to read."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulates test metrics (logged as ``test/...``)."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Returns ``row`` (the input's row index) with ``probs`` or, for regression, ``value``.

        For ``token``: ``row``, ``word`` and ``probs`` for each word whose prediction the batch holds.
        """
        if "window" in batch:  # PredictionWriter merges each text's windows once every batch is in
            return {"row": batch["row"], "logits": self(batch).detach().float()}
        out = tasks.outputs(self.task, self(batch), batch)
        if "row" in batch and "row" not in out:
            out["row"] = batch["row"]
        return out

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters' optimiser groups: no-decay, layer-wise decay, head and mixing learning rates.

        Frozen parameters are left out; :class:`~bertft.training.freezing.LayerFreezing` adds them with these same
        settings when it unfreezes them.
        """
        hp = self.hparams
        return parameter_groups(
            self.encoder,
            self.head,
            lr=hp["lr"],
            head_lr=hp["head_lr"] if hp["head_lr"] is not None else hp["lr"],
            mix_lr=hp["mix_lr"],
            weight_decay=hp["weight_decay"],
            layer_lr_decay=hp["layer_lr_decay"],
        )

    def build_optimizer(self) -> Optimizer:
        """AdamW over this model's parameter groups (no-decay, layer-wise decay, head and mixing learning rates).

        What ``configure_optimizers`` trains with, without the schedule; for loops written by hand around the model.
        """
        hp = self.hparams
        return make_optimizer(self.parameter_groups(), tuple(hp["betas"]), hp["eps"], hp["fused"])

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over parameter groups, with warmup then decay stepped per optimiser step."""
        hp = self.hparams
        optimizer = self.build_optimizer()
        # Counts optimiser steps, so it is right under gradient accumulation and with several devices.
        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(hp["warmup_ratio"] * total)
        scheduler = warmup_then_decay(optimizer, warmup, total, hp["schedule"])
        # "name" makes LearningRateMonitor log one `lr/<group name>` series per parameter group.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
