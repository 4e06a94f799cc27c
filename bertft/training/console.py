"""What a run prints: bertft's own lines, progress lines in logs, and none of the other libraries' noise.

By default the command line hides what a bertft user cannot act on (``--show_library_output`` or
``BERTFT_DEBUG=1`` shows it):

- Lightning's advertisements (``💡 Tip: ... litlogger``, ``... litmodels``);
- the ``LeafSpec`` deprecation warning that Lightning's own code triggers in torch;
- transformers' ``Loading weights`` progress bars.

The model summary never shows Lightning's FLOPs column when it counted none (bertft's modules have no
``example_input_array``, so it would read 0 for every row). When stdout is not a terminal (a file, a CI log, a
scheduler's output), a live progress bar draws nothing until the end: :class:`ProgressLog` prints one line every few
seconds or steps instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar, RichModelSummary
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary.model_summary import (
    _format_summary_table,
    get_formatted_model_size,
    get_human_readable_count,
)
from torch import Tensor

# Where Lightning's rank_zero_info writes, its tips included (bertft's own lines go there too, so filter by content).
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
_LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"

_undo: list[Callable[[], None]] = []  # how to put back what quiet() changed, newest last


class _DropAdvertisements(logging.Filter):
    """Drops Lightning's ``💡 Tip:`` records (advertisements for its cloud services); passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not str(record.msg).startswith("💡 Tip:")


def quiet() -> None:
    """Hides other libraries' noise for the rest of the command (see the module docstring); :func:`unquiet` undoes it.

    Calling it twice is harmless: it installs each filter once.
    """
    if _undo:
        return
    logger = logging.getLogger(_RANK_ZERO_LOGGER)
    advertisements = _DropAdvertisements()
    logger.addFilter(advertisements)
    _undo.append(lambda: logger.removeFilter(advertisements))

    # Raised in torch, attributed to Lightning's module: nothing a bertft user can change.
    saved_filters = warnings.filters[:]
    warnings.filterwarnings(
        "ignore", message=_LEAFSPEC_WARNING, category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree"
    )

    def restore_warnings() -> None:
        warnings.filters[:] = saved_filters
        warnings._filters_mutated()  # type: ignore[attr-defined]  # what filterwarnings itself calls after a change

    _undo.append(restore_warnings)

    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        _undo.append(hf_logging.enable_progress_bar)


def unquiet() -> None:
    """Puts back everything :func:`quiet` hid (``--show_library_output``, and at the end of each command)."""
    while _undo:
        _undo.pop()()


@contextlib.contextmanager
def quieted() -> Iterator[None]:
    """One command's span: :func:`quiet` (unless ``BERTFT_DEBUG`` is set), then :func:`unquiet` however it ends."""
    if not os.environ.get("BERTFT_DEBUG"):
        quiet()
    try:
        yield
    finally:
        unquiet()


# --- model summary ------------------------------------------------------------------------------------------------


def _without_flops(summary_data: list[tuple[str, list[str]]], total_flops: int) -> list[tuple[str, list[str]]]:
    if total_flops:
        return summary_data
    return [(name, values) for name, values in summary_data if name != "FLOPs"]


class PlainModelSummary(LightningModelSummary):
    """Lightning's text model summary, without the FLOPs column and total when nothing was counted."""

    @staticmethod
    def summarize(  # noqa: D102
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        table = _format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *_without_flops(summary_data, total_flops),
        )
        if not total_flops:
            table = table.rsplit("\n", 1)[0]  # its last line is "Total Flops"
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + table)


class RichSummary(RichModelSummary):
    """Lightning's rich model summary (the one drawn in a terminal), without FLOPs when nothing was counted."""

    @staticmethod
    def summarize(  # noqa: D102
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = _without_flops(summary_data, total_flops)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            style = "dim" if name == " " else "white" if name in ("In sizes", "Out sizes") else None
            table.add_column(name, justify="right" if name in ("Params", "FLOPs") else "left", style=style)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        lines = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes["train"])),
            ("Modules in eval mode", str(total_training_modes["eval"])),
        ]
        if total_flops:
            lines.append(("Total FLOPs", get_human_readable_count(total_flops)))
        for label, value in lines:
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)


def replace_model_summary(trainer: L.Trainer) -> None:
    """Swaps the trainer's default model summary for the same one without an empty FLOPs column.

    Done after the trainer is built, rather than by passing a summary callback, so ``enable_model_summary: false``
    still turns it off and Lightning says nothing about a user-supplied summary.
    """
    for i, callback in enumerate(trainer.callbacks):
        ours = {RichModelSummary: RichSummary, LightningModelSummary: PlainModelSummary}.get(type(callback))
        if ours is not None:
            replacement = ours(max_depth=callback._max_depth, **callback._summarize_kwargs)
            trainer.callbacks[i] = replacement  # type: ignore[index]


# --- progress lines ------------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLog(Callback):
    """One line of training progress every few seconds or optimiser steps, for logs where a live bar cannot draw.

    A line reads ``step 140/900 | epoch 0 | loss 0.4123 | 73.1 samples/s | elapsed 1:52 | ETA 5:26``: the loss is the
    mean over the optimiser steps since the previous line, samples/s counts all devices and leaves out validation
    time, and the ETA is the training time left at that rate (validation not included). After each validation one
    more line gives its metrics. When it is active, the trainer's own progress bar is turned off (it would print its
    last frame only at the end of each stage). It is silent when ``trainer.enable_progress_bar`` is false.

    Args:
        every_n_seconds: Seconds between lines (checked at the end of each optimiser step); 0 turns the clock off.
        every_n_steps: A line at every multiple of this many optimiser steps too; 0 (the default) leaves it to the
            clock.
        enabled: ``true``: always print lines (and turn the bar off); ``false``: never; ``null`` (the default): only
            when stdout is not a terminal.
    """

    def __init__(self, every_n_seconds: float = 30.0, every_n_steps: int = 0, enabled: bool | None = None) -> None:
        if every_n_seconds < 0 or every_n_steps < 0:
            raise ValueError(
                f"progress.every_n_seconds and progress.every_n_steps must be 0 (off) or positive, got "
                f"{every_n_seconds} and {every_n_steps}"
            )
        self.every_n_seconds = every_n_seconds
        self.every_n_steps = every_n_steps
        self.enabled = enabled
        self._active = False
        self._reset_window()

    def _reset_window(self) -> None:
        self._window_start: float | None = time.perf_counter()
        self._window_step = 0
        self._window_train_time = 0.0  # training time of the window before the current stretch
        self._window_samples = 0
        self._loss_sum: Tensor | float = 0.0  # stays on the device until a line is printed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Decides whether to print, and turns the live bar off when it does."""
        wanted = self.enabled if self.enabled is not None else not sys.stdout.isatty()
        bar = trainer.progress_bar_callback
        self._active = bool(wanted) and bar is not None and stage == "fit"
        if self._active and isinstance(bar, ProgressBar):
            bar.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Starts the clocks and reads the number of optimiser steps the run will make."""
        self._total = trainer.estimated_stepping_batches
        self._train_time = 0.0  # training time of the whole run up to the current window
        self._train_steps = 0
        self._run_start = time.perf_counter()
        self._reset_window()
        self._window_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Accumulates the loss (on the device) and samples; prints a line when one is due."""
        if not self._active:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            # Lightning divides each batch's loss by the accumulation factor, so the sum over a step's batches is
            # that step's loss; dividing by the steps later gives the mean per optimiser step.
            self._loss_sum = self._loss_sum + loss.detach().float()
        if isinstance(batch, dict) and "input_ids" in batch:
            self._window_samples += int(batch["input_ids"].shape[0])
        steps = trainer.global_step - self._window_step
        if steps <= 0 or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        due_by_steps = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        due_by_clock = self.every_n_seconds and now - (self._window_start or now) >= self.every_n_seconds
        if due_by_steps or due_by_clock:
            self._print_line(trainer, steps, now)

    def _print_line(self, trainer: L.Trainer, steps: int, now: float) -> None:
        window_time = self._window_train_time + now - (self._window_start or now)
        self._train_time += window_time
        self._train_steps += steps
        loss = float(self._loss_sum) / steps  # the one host sync, once per line
        step = trainer.global_step
        total = self._total if math.isfinite(self._total) else None
        parts = [f"step {step}/{total}" if total else f"step {step}", f"epoch {trainer.current_epoch}"]
        parts.append(f"loss {loss:.4f}")
        if self._window_samples:
            parts.append(f"{trainer.world_size * self._window_samples / window_time:.1f} samples/s")
        parts.append(f"elapsed {_duration(now - self._run_start)}")
        if total:
            parts.append(f"ETA {_duration(max(total - step, 0) * self._train_time / self._train_steps)}")
        print(" | ".join(parts), flush=True)
        self._reset_window()
        self._window_step = step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stops the window's clock: validation (and the checkpoint saves after it) is not training time."""
        if self._active and not trainer.sanity_checking and self._window_start is not None:
            self._window_train_time += time.perf_counter() - self._window_start
            self._window_start = None  # restarted by the next training batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """Restarts the window's clock after a validation."""
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Prints the validation metrics."""
        if self._active and not trainer.sanity_checking:
            self._print_validation(trainer)

    @rank_zero_only
    def _print_validation(self, trainer: L.Trainer) -> None:
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            values = " | ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()) if _is_scalar(v))
            print(f"validation at step {trainer.global_step}: {values}", flush=True)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Tensor) or value.numel() == 1
