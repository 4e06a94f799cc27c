"""Surviving faults: ``last.ckpt`` kept fresh mid-epoch, exact resumes, a checkpoint on SIGTERM, a stop on NaN loss.

Lightning restores the weights, the optimiser, the learning-rate schedule and the loop counters from a checkpoint.
The training loader's position within the epoch is saved by :class:`~bertft.data.sampler.ResumableDataLoader`. What
Lightning leaves out is here: writing ``last.ckpt`` during an epoch, handing the saved position back to the loader
(Lightning 2.6 drops it for models that ask for ``estimated_stepping_batches``), the random-number generators that
dropout draws from, saving on SIGTERM before Lightning stops, never saving a model whose loss went non-finite, and
checkpoint files that are never left half-written.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from bertft.io import atomic_writer


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with the temporary file in the checkpoint's own folder.

    Lightning's ``_atomic_save`` writes through an fsspec transaction whose temporary file lives in the system temp
    folder; when that is another file system, committing it is a copy into the real name, and a kill during the copy
    leaves a truncated ``last.ckpt``. Here the rename is always within one folder. Remote paths (``s3://``, ...) keep
    Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Writes ``checkpoint`` with ``torch.save`` to a temporary file beside ``path``, then renames it."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_writer(path, binary=True) as f:
            torch.save(checkpoint, f)


def last_checkpoint_path(trainer: L.Trainer) -> str | None:
    """Where the trainer's :class:`ModelCheckpoint` keeps ``last.ckpt``; ``None`` without one (or before setup)."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
        return None
    return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)


def find_last_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The most recently written ``last.ckpt`` anywhere under ``root`` (a run's ``default_root_dir``), or ``None``."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob("last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def rng_states() -> dict[str, Any]:
    """This process's random-number generator states: torch (CPU and every GPU), numpy and Python ``random``.

    Kept to tensors, tuples and numbers so that ``torch.load(weights_only=True)`` reads them back.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoint(Checkpoint):
    """Refreshes ``last.ckpt`` every few optimiser steps, carries the RNG states, and saves ``last.ckpt`` on SIGTERM.

    With it, a run killed at any point resumes (``fit --ckpt_path last``) from at most ``every_n_steps`` steps back
    and continues exactly as the uninterrupted run would have: the same batches (the loader's position is in the
    checkpoint), the same dropout masks (the RNG states are), the same optimiser and schedule. It writes the same
    file as the best-checkpoint :class:`ModelCheckpoint` (its ``dirpath``/``last.ckpt``) and never touches the best
    checkpoint, whose metric only exists after validation.

    On SIGTERM (what schedulers send before killing a job) Lightning finishes the current step and stops with
    ``SIGTERMException``; this callback first writes ``last.ckpt`` at that step boundary. The CLI then exits with
    status 143 and a one-line message saying where the checkpoint is and how to resume.

    Under several processes the ranks must stop at the same step, or one waits forever in a collective the others
    never reach. Lightning's own SIGTERM handler broadcasts from inside the signal handler, at whatever point each
    rank happens to be, and so hangs the run; during training this callback handles SIGTERM instead: the handler
    only notes the signal (rank 0 still forwards it to the ranks it started), and after every batch the ranks agree
    (one all-reduce of a flag) whether any of them got it. If so, all save ``last.ckpt`` together and stop there.

    Args:
        every_n_steps: Optimiser steps between refreshes of ``last.ckpt`` during an epoch; 0 turns the refresh off
            (``last.ckpt`` is then written only after validation, and on SIGTERM). Each write costs one checkpoint
            save (about 3x the model's size on disk with AdamW: 270 MB and about 1 s for MiniLM on a CPU), so keep it
            at a few minutes of training: 500 steps are about 3 minutes of MiniLM on 2 CPU cores.
    """

    def __init__(self, every_n_steps: int = 500) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be 0 (off) or positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._saved_at_step = -1
        self._pending_rng: dict[str, Any] | None = None
        #: Where the SIGTERM checkpoint went, for the CLI's message (``None`` until one is written).
        self.sigterm_checkpoint: str | None = None
        self._sigterm_seen = False  # several processes: this rank got SIGTERM, not yet agreed on by all
        self._handler_installed = False

    def _save_last(self, trainer: L.Trainer) -> str | None:
        path = last_checkpoint_path(trainer)
        if path is None or self._saved_at_step == trainer.global_step:
            return path
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            # Its own last.ckpt from now on: otherwise it would write `last-v1.ckpt` beside ours at validation.
            callback.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank 0 writes
        self._saved_at_step = trainer.global_step
        return path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Hands the checkpoint's loader position to the training loader, which Lightning 2.6 skips with bertft.

        Lightning loads loader states only when it builds the training loader after restoring the checkpoint. The
        model's ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches``, which builds the loader
        earlier, so the saved position would be dropped and the resumed epoch would start again from its first
        batch. The loader's iterator has not started yet here (it is lazy), so loading now still takes effect.
        """
        load = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
        if load is not None:
            load()  # a no-op unless restarting mid-epoch with a saved position not yet loaded
        self._handle_sigterm_in_step(trainer)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Several processes: takes SIGTERM over from Lightning before the first collective of the run's loops."""
        self._handle_sigterm_in_step(trainer)

    def _handle_sigterm_in_step(self, trainer: L.Trainer) -> None:
        # Lightning registers its handlers right before the sanity check and restores the previous ones at the end.
        if (
            trainer.world_size == 1
            or self._handler_installed
            or threading.current_thread() is not threading.main_thread()
        ):
            return
        self._sigterm_seen = False

        def note(signum: int, frame: FrameType | None) -> None:
            launcher = trainer.strategy.launcher
            if not self._sigterm_seen and launcher is not None:
                launcher.kill(signum)  # rank 0 of Lightning's launcher: the ranks it started get it too
            self._sigterm_seen = True

        signal.signal(signal.SIGTERM, note)
        self._handler_installed = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning restores the signal handlers it found; ours goes with them."""
        self._handler_installed = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """After a resume, puts the RNG states back right before the first step, where they were saved."""
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Writes ``last.ckpt`` every ``every_n_steps`` optimiser steps, and at once when SIGTERM has arrived."""
        step = trainer.global_step
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self._sigterm_seen, all=False):
            # Some rank got SIGTERM: every rank saves, and Lightning raises SIGTERMException after this batch on all.
            self.sigterm_checkpoint = self._save_last(trainer)
            trainer._signal_connector.received_sigterm = True
        elif trainer.received_sigterm and trainer.world_size == 1:
            # Lightning raises SIGTERMException right after this batch: save first, at this step boundary.
            self.sigterm_checkpoint = self._save_last(trainer)
        elif self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._save_last(trainer)  # once per step: accumulation repeats a step over several batches

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On SIGTERM: makes sure ``last.ckpt`` holds the current step and tells the CLI where it is."""
        if not isinstance(exception, SIGTERMException):
            return
        if self.sigterm_checkpoint is None:  # several processes: every rank stops here together
            self.sigterm_checkpoint = self._save_last(trainer)
        exception.bertft_checkpoint = self.sigterm_checkpoint  # type: ignore[attr-defined]
        exception.bertft_step = trainer.global_step  # type: ignore[attr-defined]
        exception.bertft_root = trainer.default_root_dir  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """Every process's RNG states at the moment of saving (gathered from all ranks under DDP)."""
        mine = rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            return {"rng": gathered}
        return {"rng": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps this rank's RNG states for the first training step after the restore."""
        states = state_dict.get("rng") or []
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if states:
            self._pending_rng = states[rank] if rank < len(states) else states[0]


class NonFiniteLossError(ValueError):
    """The training loss (or the weights) became NaN or infinite."""


class NonFiniteLossStop(Callback):
    """Stops training when the loss becomes NaN or infinite, before a non-finite model reaches any checkpoint.

    Each step adds two tiny device-side operations (no host synchronisation): a flag and the first bad step. The
    flag is read once per logging interval (``trainer.log_every_n_steps``, where Lightning synchronises anyway) and
    before every checkpoint write, which also checks that the weights are finite (a finite loss with an infinite
    gradient leaves non-finite weights). So ``last.ckpt`` and the best checkpoint always hold the last good model.

    Args:
        check_every_n_steps: Optimiser steps between checks of the flag; default ``trainer.log_every_n_steps``.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be positive, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: Tensor | None = None  # optimiser step (1-based) whose loss was first non-finite; -1: none

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Creates the device-side record of the first bad step."""
        self._first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        """Records, on the device, the first optimiser step whose loss is not finite."""
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()).all()
        self._first_bad.masked_fill_(bad & (self._first_bad < 0), trainer.global_step + 1)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Checks the flag once per logging interval."""
        every = self.check_every_n_steps or max(trainer.log_every_n_steps, 1)
        if trainer.global_step % every == 0:
            self._check(trainer, pl_module, weights=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A last check, so a run never ends reporting success on a non-finite model."""
        self._check(trainer, pl_module, weights=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Runs inside every checkpoint save, before the file is written: a non-finite model is never saved."""
        if trainer.state.fn == TrainerFn.FITTING:
            self._check(trainer, pl_module, weights=True)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, weights: bool) -> None:
        first = -1 if self._first_bad is None else int(self._first_bad.item())
        weights_bad = False
        if weights:
            finite = [torch.isfinite(p.detach()).all() for p in pl_module.parameters()]
            weights_bad = bool(finite) and not bool(torch.stack(finite).all().item())
        # Every rank must agree, or one would stop while the others wait for it.
        if not trainer.strategy.reduce_boolean_decision(first >= 0 or weights_bad, all=False):
            return
        step = f"optimiser step {first}" if first >= 0 else f"or before optimiser step {trainer.global_step}"
        what = "the training loss" if first >= 0 else "the model's weights"
        last = last_checkpoint_path(trainer)
        kept = (
            f"The last good checkpoint, {last}, was kept (non-finite weights are never saved); resume from it "
            "with `--ckpt_path last` once the cause is fixed."
            if last and os.path.isfile(last)
            else "No checkpoint had been written yet."
        )
        raise NonFiniteLossError(
            f"{what} became non-finite (NaN or inf) at {step} (epoch {trainer.current_epoch}); training stopped. "
            f"{kept} Usual fixes: a lower learning rate (--model.lr), gradient clipping "
            "(--trainer.gradient_clip_val 1.0), fp32 instead of fp16 (--trainer.precision 32), or check the training "
            "data for broken rows (empty texts, labels out of range)."
        )


def resume_message(exception: BaseException) -> str:
    """The one line the CLI prints when SIGTERM stopped training."""
    path = getattr(exception, "bertft_checkpoint", None)
    step = getattr(exception, "bertft_step", "?")
    root = getattr(exception, "bertft_root", "trainer.default_root_dir")
    if not path:
        return f"bertft: stopped by SIGTERM after optimiser step {step}; no checkpoint could be written."
    return (
        f"bertft: stopped by SIGTERM after optimiser step {step}; checkpoint saved to {path}. Resume with the same "
        f"command plus `--ckpt_path last` (it picks the newest last.ckpt under {root})."
    )


def log_resume(path: Path) -> None:
    """Says which file a run resumes from."""
    rank_zero_info(f"Resuming from {path} (the newest last.ckpt under trainer.default_root_dir)")
