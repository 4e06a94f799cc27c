"""``EarlyStopping``: Lightning's, watching the task's primary validation metric, and off until ``patience`` is set."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping


class EarlyStopping(_LightningEarlyStopping):
    """Stops ``fit`` when the validation metric has not improved for ``patience`` validations.

    The CLI always adds one, under ``early_stopping``, with ``monitor`` and ``mode`` linked to the task's primary
    metric (``val/acc``, ``val/f1_micro``, ``val/spearman`` or ``val/f1``; higher is better): setting ``patience``
    (``configs/callbacks/early_stopping.yaml``) is all that turns it on.

    Args:
        patience: Validation runs without improvement before stopping; ``null`` turns early stopping off.
        monitor: The logged metric to watch (linked to the task by the CLI).
        mode: ``max`` when higher is better, ``min`` otherwise (linked to the task by the CLI).
        min_delta: Smallest change that counts as an improvement.
        check_finite: Stop when the metric becomes NaN or infinite.
        stopping_threshold: Stop at once when the metric reaches this value.
        verbose: Log every check.
    """

    def __init__(
        self,
        patience: int | None = None,
        monitor: str = "val/loss",
        mode: Literal["min", "max"] = "min",
        min_delta: float = 0.0,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        verbose: bool = False,
    ) -> None:
        if patience is not None and patience < 0:
            raise ValueError(f"early_stopping.patience={patience} must be 0 or more, or null to turn it off")
        super().__init__(
            monitor=monitor,
            patience=patience or 0,
            mode=mode,
            min_delta=min_delta,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            verbose=verbose,
        )
        self.enabled = patience is not None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if self.enabled:
            super()._run_early_stopping_check(trainer)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's state (wait count, best score) when on; nothing when off."""
        return super().state_dict() if self.enabled else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the wait count and best score of an interrupted run."""
        if self.enabled and state_dict:
            super().load_state_dict(state_dict)
