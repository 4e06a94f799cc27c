"""``LayerFreezing``: train only the encoder's top layers, then unfreeze the rest one layer at a time.

Built on Lightning's :class:`~lightning.pytorch.callbacks.BaseFinetuning`, which freezes before the optimiser is
built, adds the unfrozen parameters to it as new groups, and records those groups in checkpoints so that a resumed
run rebuilds them. What bertft adds: layers counted from the top, a schedule in optimiser steps or epochs, and new
groups that get the learning rate, weight decay and schedule they would have had from the start (layer-wise decay
included).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from bertft.encoder import embeddings_module, transformer_layers


class LayerFreezing(BaseFinetuning):
    """Partial freezing (``train_top_layers``) and gradual unfreezing (``unfreeze_every``) of the encoder.

    The encoder is seen as levels from the top: layer ``L``, layer ``L - 1``, ..., layer 1, then the embeddings. The
    top ``train_top_layers`` levels train from the start and the rest stay bit-identical; every ``unfreeze_every``
    optimiser steps (or epochs) the next level down joins training, the embeddings last (never, with
    ``model.freeze_embeddings``). The head, and anything above the layers such as BERT's pooler, always trains.
    ULMFiT's gradual unfreezing is ``train_top_layers: 0, unfreeze_every: 1, interval: epoch``.

    The CLI always adds one, under ``freezing``; it does nothing until ``train_top_layers`` is set
    (``configs/callbacks/gradual_unfreezing.yaml``).

    Args:
        train_top_layers: Transformer layers that train from the start, counted from the top (0: only the head);
            ``null`` turns freezing off.
        unfreeze_every: Unfreeze one more level every this many optimiser steps (or epochs); ``null`` never does.
        interval: ``step`` (optimiser steps, so gradient accumulation counts once) or ``epoch``.
    """

    def __init__(
        self,
        train_top_layers: int | None = None,
        unfreeze_every: int | None = None,
        interval: Literal["step", "epoch"] = "step",
    ) -> None:
        super().__init__()
        if train_top_layers is not None and train_top_layers < 0:
            raise ValueError(f"freezing.train_top_layers={train_top_layers} must be 0 or more (0: train only the head)")
        if unfreeze_every is not None and unfreeze_every < 1:
            raise ValueError(f"freezing.unfreeze_every={unfreeze_every} must be 1 or more, or null")
        if unfreeze_every is not None and train_top_layers is None:
            raise ValueError("freezing.unfreeze_every needs freezing.train_top_layers: the layers to start with")
        if interval not in ("step", "epoch"):
            raise ValueError(f"freezing.interval={interval!r}: choose 'step' or 'epoch'")
        self.train_top_layers, self.unfreeze_every, self.interval = train_top_layers, unfreeze_every, interval
        self._levels: list[nn.Module] = []
        self.unfrozen = 0  # levels training now, from the top

    @property
    def enabled(self) -> bool:
        """Whether the callback freezes anything."""
        return self.train_top_layers is not None

    def levels(self, pl_module: L.LightningModule) -> list[nn.Module]:
        """The encoder's levels from the top: its transformer layers, then the embeddings (unless kept frozen)."""
        encoder = pl_module.encoder
        levels: list[nn.Module] = list(reversed(transformer_layers(encoder)))
        if not pl_module.hparams.get("freeze_embeddings"):
            levels.append(embeddings_module(encoder))
        return levels

    def check_model(self, pl_module: L.LightningModule) -> None:
        """Refuses what freezing cannot compose with: a frozen encoder, and LoRA adapters (``model.peft``).

        Unfreezing a level makes all its weights trainable, which under LoRA would train the base weights the adapters
        are meant to leave untouched.

        Raises:
            ValueError: Freezing is on and the model freezes its encoder or trains adapters.
        """
        if not self.enabled:
            return
        if pl_module.hparams.get("freeze_encoder"):
            raise ValueError("freezing.train_top_layers and model.freeze_encoder both freeze the encoder: use one")
        if pl_module.hparams.get("peft"):
            raise ValueError(
                "freezing.train_top_layers with model.peft: LoRA already keeps every encoder weight frozen, and "
                "unfreezing a layer would train its base weights too. To adapt only the top layers, list them in "
                "model.peft.layers instead (0 is the bottom layer)."
            )

    def target(self, tick: int) -> int:
        """Levels that train after ``tick`` optimiser steps (or epochs)."""
        assert self.train_top_layers is not None
        more = tick // self.unfreeze_every if self.unfreeze_every else 0
        return min(len(self._levels), self.train_top_layers + more)

    # ----- BaseFinetuning -------------------------------------------------------------------------------------------

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        """Freezes every level below the top ``train_top_layers`` (before the optimiser is built)."""
        if not self.enabled:
            return
        self.check_model(pl_module)
        self._levels = self.levels(pl_module)
        layers = len(transformer_layers(pl_module.encoder))
        if self.train_top_layers > layers:
            raise ValueError(f"freezing.train_top_layers={self.train_top_layers}, but the encoder has {layers} layers")
        self.unfrozen = self.target(0)
        self.freeze(self._levels[self.unfrozen :])

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """At each epoch's start (``interval: epoch``): unfreezes the levels the schedule asks for by now."""
        if self.enabled and self.interval == "epoch":
            self._unfreeze_to(self.target(epoch), pl_module, optimizer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Before each batch (``interval: step``): unfreezes the levels the schedule asks for by this step."""
        if not self.enabled or self.interval != "step":
            return
        optimizer = trainer.optimizers[0]
        before = len(optimizer.param_groups)
        self._unfreeze_to(self.target(trainer.global_step), pl_module, optimizer)
        self._store(pl_module, 0, before, optimizer.param_groups)  # what a checkpoint needs to rebuild the groups

    def _unfreeze_to(self, wanted: int, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        while self.unfrozen < wanted:
            level = self._levels[self.unfrozen]
            self.make_trainable(level)
            self._add_groups(level, pl_module, optimizer)
            self.unfrozen += 1
            rank_zero_info(f"freezing: {self.unfrozen} of {len(self._levels)} encoder levels train now")

    def _add_groups(self, level: nn.Module, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        """Adds ``level``'s parameters to the optimiser in the groups ``parameter_groups`` gives them.

        So they get their own learning rate (with layer-wise decay) and weight decay, and follow the schedule from
        where it stands.
        """
        mine = {id(p) for p in level.parameters()}
        scheduler = _lambda_scheduler(pl_module)
        for group in pl_module.parameter_groups():
            params = [p for p in group["params"] if id(p) in mine]
            if not params:
                continue
            peak = group["lr"]
            factor = scheduler.lr_lambdas[0](scheduler.last_epoch) if scheduler is not None else 1.0
            name = f"{group['name']}.unfrozen{self.unfrozen + 1}"
            optimizer.add_param_group(
                {**group, "params": params, "name": name, "lr": peak * factor, "initial_lr": peak}
            )
            if scheduler is not None:
                scheduler.base_lrs.append(peak)
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On resume, rebuilds the unfrozen groups (Lightning), then makes their parameters trainable again."""
        if not self.enabled:
            return
        super().on_fit_start(trainer, pl_module)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if optimizer is None:
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for p in pl_module.parameters():
            if id(p) in in_optimizer:
                p.requires_grad_(True)
        self.unfrozen = sum(all(id(p) in in_optimizer for p in level.parameters()) for level in self._levels)
        scheduler = _lambda_scheduler(pl_module)
        if scheduler is not None:  # the checkpoint's scheduler state brings base_lrs; the schedule must cover them
            while len(scheduler.lr_lambdas) < len(optimizer.param_groups):
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
                scheduler.base_lrs.append(optimizer.param_groups[len(scheduler.base_lrs)]["initial_lr"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Runs the epoch schedule (Lightning's hook) when on."""
        if self.enabled:
            super().on_train_epoch_start(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The optimiser groups added so far (by parameter name), when on."""
        return super().state_dict() if self.enabled else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remembers the groups to rebuild when ``fit`` resumes."""
        if self.enabled and state_dict:
            super().load_state_dict(state_dict)


def _lambda_scheduler(pl_module: L.LightningModule) -> LambdaLR | None:
    trainer = pl_module.trainer
    for config in trainer.lr_scheduler_configs if trainer is not None else []:
        if isinstance(config.scheduler, LambdaLR):
            return config.scheduler
    return None
