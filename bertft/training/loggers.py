"""Experiment loggers for the CLI: W&B offline unless you are logged in, TensorBoard, CSV, and the run's record.

The three loggers are Lightning's own with two changes: ``save_dir`` defaults to the trainer's ``default_root_dir``
(the CLI fills it in), and :class:`WandbLogger` picks offline or online by itself, never waiting on a network it
cannot reach. :class:`ConfigToLoggers` sends the resolved CLI config, package versions and git commit to every
logger exactly once.
"""

from __future__ import annotations

import netrc
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from bertft.io import atomic_write_text

PACKAGES = ("bertft", "torch", "lightning", "transformers", "torchmetrics", "jsonargparse", "wandb", "tensorboard")
# Values of config keys that look like these are replaced before the config reaches any logger.
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)


def wandb_login_found() -> bool:
    """Whether W&B credentials are available locally (``WANDB_API_KEY`` or a netrc entry); never uses the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(pl_loggers.WandbLogger):
    """Lightning's W&B logger, offline unless a login is found, with the offline run's upload command.

    Args:
        project: W&B project.
        name: Display name of the run (W&B picks one when ``null``).
        group: Group runs together, e.g. the seeds of one experiment.
        tags: Tags to filter runs by.
        notes: A longer description of the run.
        entity: W&B team or user (your default entity when ``null``).
        job_type: Kind of run, e.g. ``train`` or ``eval``.
        offline: ``null`` (auto): online when ``WANDB_API_KEY`` or a ``~/.netrc`` login is found, offline otherwise;
            ``WANDB_MODE`` in the environment overrides the choice. ``true`` / ``false`` force it.
        log_model: Upload checkpoints as W&B artifacts: ``false``, ``true`` (at the end) or ``all`` (as saved). Needs
            an online run; checkpoints always stay on disk.
        init_timeout: Seconds to wait for the W&B server when online; past it the run is written offline instead.
        save_dir: Folder of the ``wandb/`` run directories (and checkpoints); the CLI uses ``trainer.default_root_dir``.
        id: Run id, to resume a run.
        prefix: Prefix for every metric key.
        kwargs: Passed to ``wandb.init``.
    """

    def __init__(
        self,
        project: str = "bertft",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        entity: str | None = None,
        job_type: str | None = None,
        offline: bool | None = None,
        log_model: Literal["all"] | bool = False,
        init_timeout: float = 30.0,
        save_dir: str | None = None,
        id: str | None = None,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        env_mode = os.environ.get("WANDB_MODE")
        if offline is None:
            self.offline_reason = None if env_mode or wandb_login_found() else "no W&B login found"
        else:
            self.offline_reason = "offline: true" if offline else None
        if env_mode in ("offline", "dryrun", "disabled") and offline is not False:
            self.offline_reason = f"WANDB_MODE={env_mode}"
        if self.offline_reason and log_model:
            message = (
                f"log_model={log_model!r} uploads checkpoints, but this W&B run is offline ({self.offline_reason}). "
                "Log in (`wandb login`, or set WANDB_API_KEY) to upload them, or set log_model: false; "
                "checkpoints are saved on disk either way."
            )
            if offline is None and not env_mode:  # chosen for the user: keep the run, drop the upload
                rank_zero_warn(message + " Continuing without uploading checkpoints.")
                log_model = False
            else:  # asked for explicitly: the two settings contradict each other
                raise ValueError(message)
        if self.offline_reason and not env_mode:
            kwargs["mode"] = "offline"  # per run: Lightning's `offline=True` would set WANDB_MODE for the process
        if not self.offline_reason and "settings" not in kwargs and "WANDB_INIT_TIMEOUT" not in os.environ:
            kwargs["settings"] = {"init_timeout": init_timeout}
        if self.offline_reason:
            # wandb's banner, sync hint and warnings say nothing actionable offline; `finish` says where the run
            # is and how to upload it, once.
            kwargs["settings"] = _with_silent(kwargs.get("settings"))
        self._offline_message_shown = False
        super().__init__(
            name=name,
            save_dir=save_dir if save_dir is not None else ".",
            id=id,
            project=project,
            log_model=log_model,
            prefix=prefix,
            group=group,
            tags=tags,
            notes=notes,
            entity=entity,
            job_type=job_type,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # wandb warns about the argument even when it is None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use; written offline when the server cannot be reached."""
        import wandb

        try:
            return super().experiment
        except wandb.errors.CommError as err:  # no network, server down, or init_timeout passed
            if self._wandb_init.get("mode") == "offline":
                raise
            rank_zero_warn(f"W&B server unreachable ({str(err).splitlines()[0]}); writing the run offline instead")
            self.offline_reason = "W&B server unreachable"
            self._log_model = False  # artifacts cannot be uploaded offline
            self._wandb_init["mode"] = "offline"
            self._wandb_init["settings"] = _with_silent(None)
            return super().experiment

    @rank_zero_only
    def finish(self, exit_code: int = 0) -> None:
        """Closes the run (flushing it to disk) and, for an offline run, says where it is and how to upload it."""
        run = self._experiment
        if run is None:
            return
        run_dir = Path(run.dir).parent  # run.dir is the run's files/ folder
        run.finish(exit_code=exit_code)
        if self.offline_reason and not self._offline_message_shown and not _wandb_disabled():
            self._offline_message_shown = True
            rank_zero_info(
                f"W&B run saved offline ({self.offline_reason}) to {run_dir}\n"
                f"Upload it with: wandb sync {run_dir}   (after `wandb login`)"
            )


def _wandb_disabled() -> bool:
    return os.environ.get("WANDB_MODE") == "disabled"


def _with_silent(settings: Any) -> Any:
    import wandb

    if settings is None:
        return wandb.Settings(silent=True)
    if isinstance(settings, dict):
        return {"silent": True, **settings}
    return settings


class TensorBoardLogger(pl_loggers.TensorBoardLogger):
    """Lightning's TensorBoard logger; view with ``tensorboard --logdir <save_dir>/<name>``.

    Args:
        save_dir: Root folder; the CLI uses ``trainer.default_root_dir``.
        name: Sub-folder of the runs; each run gets ``version_N`` inside it.
        version: Run folder name (default: the next ``version_N``).
        default_hp_metric: Log a placeholder ``hp_metric``; off, so every chart is a real metric.
        kwargs: Passed to Lightning's ``TensorBoardLogger``.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str = "tensorboard",
        version: int | str | None = None,
        default_hp_metric: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir if save_dir is not None else ".",
            name=name,
            version=version,
            default_hp_metric=default_hp_metric,
            **kwargs,
        )


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSV logger: ``<save_dir>/<name>/version_N/metrics.csv`` and ``hparams.yaml``.

    Args:
        save_dir: Root folder; the CLI uses ``trainer.default_root_dir``.
        name: Sub-folder of the runs.
        version: Run folder name (default: the next ``version_N``).
        kwargs: Passed to Lightning's ``CSVLogger``.
    """

    def __init__(
        self, save_dir: str | None = None, name: str = "csv", version: int | str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, **kwargs)


def finish_loggers(trainer: Trainer | None, failed: bool = False) -> None:
    """Ends the W&B runs of ``trainer``'s loggers; a no-op for the others."""
    for logger in getattr(trainer, "loggers", []):
        if isinstance(logger, WandbLogger):
            logger.finish(exit_code=1 if failed else 0)


def run_info() -> dict[str, Any]:
    """Python and package versions, and the git commit of the working directory when there is one."""
    info: dict[str, Any] = {"python": platform.python_version()}
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info["packages"] = packages
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=5, check=True)  # fmt: skip
        info["git"] = {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout, or no git: nothing to record
    return info


def redact(value: Any) -> Any:
    """``value`` with the values of secret-looking keys (``api_key``, ``token``, ...) replaced by ``"<redacted>"``."""
    if isinstance(value, dict):
        return {k: "<redacted>" if _SECRET_KEY.search(str(k)) and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class ConfigToLoggers(SaveConfigCallback):
    """Saves ``config.yaml`` as Lightning does, and gives every logger the resolved config once, with run info.

    The model's and data's own hyperparameters are not logged besides (they are already inside the config under
    ``model`` and ``data``), so a W&B run's config holds each value once; ``config.yaml`` is attached to the W&B run.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Turns off the duplicate hyperparameter logging, then saves and logs the config (rank zero)."""
        pl_module._log_hyperparams = False
        if trainer.datamodule is not None:
            trainer.datamodule._log_hyperparams = False
        if self.already_saved:  # the same on every rank (Lightning broadcasts it): no collective below on any
            return
        # `trainer.log_dir` broadcasts rank 0's folder, so every rank asks for it here, in the same order. It must not
        # be asked in `save_config`, which Lightning calls on rank 0 alone: that extra broadcast would pair with the
        # other ranks' next collective (the checkpoint callback's setup) and hang the run.
        self._log_dir = trainer.log_dir
        local = self._log_dir is not None and "://" not in self._log_dir
        if self.save_to_log_dir and self.overwrite and not self.multifile and local:
            # Lightning writes config.yaml in place; a kill mid-write would leave a truncated experiment record.
            if trainer.is_global_zero:
                text = self.parser.dump(self.config, skip_none=False)
                atomic_write_text(Path(self._log_dir) / self.config_filename, text)
            self.save_to_log_dir = False  # written: Lightning's setup only logs it now
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Logs ``config`` (as saved) and ``run_info`` to every logger; attaches ``config.yaml`` to a W&B run.

        Runs on rank 0 only (Lightning's contract): nothing here may call a collective, ``trainer.log_dir`` included.
        """
        if not trainer.loggers:
            return
        raw = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        config = redact(raw)
        saved = Path(getattr(self, "_log_dir", None) or ".") / self.config_filename  # never trainer.log_dir here
        # The saved file as is (it reruns with --config), unless a secret had to be taken out of it.
        text = saved.read_text(encoding="utf-8") if saved.is_file() and config == raw else yaml.safe_dump(config)
        params = {**config, "run_info": run_info()}
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
            if isinstance(logger, pl_loggers.WandbLogger) and not _wandb_disabled():
                # A copy named apart from wandb's own files/config.yaml (the run config). Not a symlink: the next run
                # in the same folder overwrites config.yaml.
                run_dir = Path(logger.experiment.dir)
                atomic_write_text(run_dir / "lightning_config.yaml", text)
                logger.experiment.save(str(run_dir / "lightning_config.yaml"), base_path=str(run_dir), policy="now")
