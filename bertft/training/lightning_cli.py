"""``fit``, ``validate``, ``test`` and ``predict`` on LightningCLI: bertft's links, options, checks and errors.

:func:`main` runs one of those commands (``bertft.cli.main`` dispatches to it, and a sweep's trial subprocess runs it
directly); :func:`parse_config` and :func:`known_keys` let ``bertft sweep`` check a sweep against the very parser
``fit`` uses, without building anything.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from jsonargparse._common import debug_mode_active
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bertft.data import EncodedDataModule
from bertft.model import FineTuner
from bertft.tasks import PRIMARY_METRIC
from bertft.training import console
from bertft.training.allocator import reuse_freed_memory
from bertft.training.checks import (
    UnsafeCheckpointError,
    check_checkpoint_matches,
    check_output_folder,
    is_checkpoint_file,
    read_checkpoint_safely,
)
from bertft.training.console import ProgressLog
from bertft.training.distributed import TRACE_ENV, destroy_process_group, dump_stacks_on_sigusr2, trace_collectives
from bertft.training.faults import (
    AtomicCheckpointIO,
    NonFiniteLossStop,
    ResumeCheckpoint,
    find_last_checkpoint,
    log_resume,
    resume_message,
)
from bertft.training.freezing import LayerFreezing
from bertft.training.loggers import ConfigToLoggers, finish_loggers
from bertft.training.precision import default_precision
from bertft.training.prediction import PredictionWriter
from bertft.training.stopping import EarlyStopping
from bertft.training.tracking import LearningRateMonitor, Tracker


class BertftArgumentParser(LightningArgumentParser):
    """The CLI's parser: a short error with a "did you mean" for misspelt keys instead of a page of usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Reports a user error in one paragraph and exits with status 2."""
        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)  # jsonargparse uses this path internally (trying union types)
        parser = getattr(ex, "subcommand_parser", None) or self
        hint = _suggestion(parser, message)
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"bertft: error: {message}{hint}\nRun `{prog} --help` to list every option.\n")
        sys.exit(2)


def known_keys(parser: ArgumentParser) -> set[str]:
    """Every dotted option the parser knows (``model.lr``, ``data.init_args.batch_size``, ...), subcommands included."""
    keys = {opt.lstrip("-") for action in parser._actions for opt in action.option_strings}
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        keys |= known_keys(sub)
    return keys


# Options the CLI links from the data, which jsonargparse refuses by hand: say what to set instead.
_LINKED_FROM_DATA = {
    "model.num_labels": "model.num_labels follows the data (the classes in data.train_file), so it cannot be given by "
    "hand: leave it out, and give data.label_names to fix the classes and their order",
    "model.label_names": "model.label_names follows the data: give data.label_names instead",
}


def _suggestion(parser: ArgumentParser, message: str) -> str:
    linked = re.search(r'Linked "([\w.]+)"', message)
    if linked and linked.group(1) in _LINKED_FROM_DATA:
        return f"\n{_LINKED_FROM_DATA[linked.group(1)]}."
    keys = known_keys(parser)
    dotted = set(re.findall(r"[A-Za-z_]\w*(?:\.\w+)+", message)) - keys
    hints = []
    for key in sorted(dotted):
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
        if close:
            hints.append(f"{key!r}: did you mean {' or '.join(repr(c) for c in close)}?")
    return ("\n" + "\n".join(hints)) if hints else ""


def _monitor(task: str) -> str:
    return "val/" + PRIMARY_METRIC.get(task, "loss")


def _mode(task: str) -> str:
    return "max" if task in PRIMARY_METRIC else "min"  # every primary metric is higher-is-better; loss is not


class BertftCLI(LightningCLI):
    """LightningCLI with bertft's links: the encoder is named once, labels flow from the data to the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Links what a user should never type twice, and adds the checkpoint and prediction options."""
        # Data modules are chosen by class_path (TextDataModule for texts, TokenDataModule for token tasks), with
        # TextDataModule the default so a `data:` section without class_path keeps working.
        parser.set_defaults({"data": {"class_path": "bertft.data.TextDataModule"}})
        # Tokenizer and model always come from the same checkpoint.
        parser.link_arguments("model.encoder", "data.init_args.tokenizer")
        parser.link_arguments("model.task", "data.init_args.task")
        # The label vocabulary is read from the training data; linked at instantiation so it lands in the model's
        # saved hyperparameters and `load_from_checkpoint` / `--ckpt_path` work without the data.
        parser.link_arguments("data.num_labels", "model.num_labels", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.label_names", apply_on="instantiate")

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.link_arguments("model.task", "checkpoint.monitor", compute_fn=_monitor)
        parser.set_defaults(
            {
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        # Always present, silent without a logger: a layered logger config (configs/loggers/) is all a user adds.
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(Tracker, "tracking")
        # Faults: last.ckpt refreshed mid-epoch with the RNG states, a checkpoint on SIGTERM, a stop on NaN loss.
        parser.add_lightning_class_args(ResumeCheckpoint, "resume")
        parser.add_lightning_class_args(NonFiniteLossStop, "nonfinite")
        # Progress lines where a live bar cannot draw (stdout not a terminal: files, CI logs, schedulers).
        parser.add_lightning_class_args(ProgressLog, "progress")
        # Not `--verbose`: Lightning's `test` and `validate` already have one (print the results table).
        parser.add_argument(
            "--show_library_output",
            type=bool,
            default=False,
            help="Also show what other libraries print that bertft hides by default: Lightning's tips, foreign "
            "deprecation warnings, transformers' weight-loading bars (BERTFT_DEBUG=1 shows them too).",
        )
        # Off until configured (configs/callbacks/): early stopping on the task's metric, partial/gradual freezing.
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.link_arguments("model.task", "early_stopping.monitor", compute_fn=_monitor)
        parser.link_arguments("model.task", "early_stopping.mode", compute_fn=_mode)
        parser.add_lightning_class_args(LayerFreezing, "freezing")

    def _parse_ckpt_path(self) -> None:
        if self.config.get("subcommand") == "fit" and self.config["fit"].get("ckpt_path") == "last":
            _resolve_last_checkpoint(self.config["fit"])  # before the checkpoint's hyperparameters are read
        # LightningCLI then merges the checkpoint's hyperparameters into the config, silently taking its encoder and
        # head over the config's. First: read the file without running code, and refuse what the config sets otherwise.
        self._checkpoint: tuple[str, dict[str, Any]] | None = None
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is not None and "ckpt_path" in config:
            if config.get("weights_only") is False:
                raise UnsafeCheckpointError(
                    "weights_only: false would let a checkpoint run code as it loads; bertft always loads checkpoints "
                    "with weights_only=True (its own hold only tensors and plain values). Remove the option."
                )
            if is_checkpoint_file(config["ckpt_path"]):
                path = str(config["ckpt_path"])
                saved = read_checkpoint_safely(path).get("hyper_parameters") or {}
                # Options left at their defaults are taken from the checkpoint: compare only what the config sets.
                defaults = inspect.signature(self._model_class.__init__).parameters
                model = config["model"]
                given = {k: model.get(k) for k in ("encoder", "head", "task") if model.get(k) != defaults[k].default}
                check_checkpoint_matches(path, saved, given, subcommand)
                self._checkpoint = (path, saved)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Reuses the checkpoint's label vocabulary when ``test`` / ``predict`` run without the training file."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        if config.get("show_library_output"):
            console.unquiet()
        data, model = config["data"], config["model"]
        data = data.get("init_args", data)  # subclass mode: the data module's arguments sit under init_args
        if not data.get("train_file") and not data.get("label_names") and model.get("label_names"):
            data["label_names"] = model["label_names"]
        trainer = config["trainer"]
        if trainer.get("precision") is None:  # unset: bf16 only where the hardware runs it faster (precision.py)
            trainer["precision"] = default_precision(str(trainer.get("accelerator") or "auto"))
            rank_zero_info(
                f"precision: {trainer['precision']} (chosen for this hardware; set trainer.precision to override)"
            )
        # bertft's loggers leave save_dir empty: runs land beside the checkpoints in trainer.default_root_dir.
        loggers = config["trainer"].get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args and init_args["save_dir"] is None:
                init_args["save_dir"] = config["trainer"].get("default_root_dir") or "."

    def after_instantiate_classes(self) -> None:
        """Refuses a ``--ckpt_path`` trained on other labels than the data's, before its weights are loaded.

        Also refuses layer freezing on a model it cannot compose with (LoRA), before anything is written.
        """
        for callback in self.trainer.callbacks if self.subcommand == "fit" else []:
            if isinstance(callback, LayerFreezing):
                callback.check_model(self.model)
        if getattr(self, "_checkpoint", None) is not None:
            path, saved = self._checkpoint
            check_checkpoint_matches(path, saved, self.model.hparams, str(self.subcommand))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with a model summary that leaves out the FLOPs it did not count."""
        trainer = super().instantiate_trainer(**kwargs)
        console.replace_model_summary(trainer)
        return trainer

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        # Every --ckpt_path loads without unpickling code, whatever torch's default (a `weights_only: null` config).
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            kwargs["weights_only"] = True
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        # Ends a W&B run when the command ends (after fit's own test, too), flushing it and printing an offline
        # run's upload command; Lightning leaves the run open until the process exits.
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            finish_loggers(self.trainer, failed=True)
            raise
        finish_loggers(self.trainer)

    def before_fit(self) -> None:
        """Keeps ``last.ckpt`` only without validation data; checks the output folder before any tokenising.

        Without validation data there is no metric to pick a best checkpoint by. The output folder must be writable
        and its disk must have room for the checkpoints kept (:func:`bertft.training.checks.check_output_folder`).
        """
        if not getattr(self.datamodule, "has_val", self.datamodule.hparams.get("val_file")):
            for callback in self.trainer.callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.monitor:
                    rank_zero_warn(
                        f"no data.val_file or val_fraction: no best checkpoint by {callback.monitor}; last.ckpt is kept"
                    )
                    callback.monitor = None
                    callback.save_top_k = 1
            for callback in self.trainer.callbacks:
                if isinstance(callback, EarlyStopping) and callback.enabled:
                    rank_zero_warn("no data.val_file or val_fraction: early stopping has no metric to watch")
        if self.trainer.is_global_zero:  # rank 0 writes every checkpoint
            check_output_folder(self.trainer, self.model)
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # a strategy's own writer (FSDP, ...) is kept
            strategy.checkpoint_io = AtomicCheckpointIO()

    def after_fit(self) -> None:
        """Reports the test metrics of the best checkpoint when the data names a test file."""
        data = self.datamodule
        if not data.hparams.get("test_file") or self.trainer.fast_dev_run:
            return
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
        # The path itself, not "best": Lightning cannot tell which of several checkpoint callbacks (the best-metric
        # one and ResumeCheckpoint) "best" means, and warns; this one is the best-metric checkpoint's.
        self.trainer.test(self.model, datamodule=data, ckpt_path=best or None, weights_only=True)


def cli_kwargs() -> dict[str, Any]:
    """The keyword arguments of every :class:`BertftCLI` bertft builds (the command, and parsing for sweeps)."""
    return {
        "model_class": FineTuner,
        "datamodule_class": EncodedDataModule,
        "subclass_mode_data": True,  # any EncodedDataModule subclass: bertft.data.TextDataModule, TokenDataModule, ...
        # The model builds its own parameter groups (no-decay, layer-wise decay, head and mixing learning rates);
        # LightningCLI's automatic optimiser would silently replace them.
        "auto_configure_optimizers": False,
        "save_config_callback": ConfigToLoggers,  # the config reaches every logger once, with versions and commit
        "save_config_kwargs": {"overwrite": True},
        "parser_class": BertftArgumentParser,
        "parser_kwargs": {"prog": "bertft", "description": "Fine-tune BERT-family encoders with pluggable heads."},
        # The data module shards its length-grouped batches across ranks itself (bertft.data.sampler).
        "trainer_defaults": {"default_root_dir": "outputs", "use_distributed_sampler": False},
    }


class _ParseOnlyCLI(BertftCLI):
    """Parses and checks a config like ``fit`` would, and builds nothing (no encoder loaded, no data read)."""

    def _parse_ckpt_path(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:  # noqa: D102
        pass

    def instantiate_classes(self) -> None:  # noqa: D102
        pass


def parse_config(args: list[str]) -> tuple[ArgumentParser, Any]:
    """Parses ``args`` (``--config a.yaml --model.lr 1e-4 ...``) as ``fit`` would, without building anything.

    Used by ``bertft sweep`` to check a sweep's keys and values before any trial starts. A bad key or value exits
    with status 2 and one paragraph on stderr, like every command.

    Returns:
        The parser (for its known keys) and the parsed config.
    """
    with warnings.catch_warnings():  # LightningCLI warns that sys.argv (the sweep's own) differs from args
        warnings.simplefilter("ignore", UserWarning)
        cli = _ParseOnlyCLI(args=args, run=False, **cli_kwargs())
    return cli.parser, cli.config


def main(args: ArgsType = None, run: bool = True) -> BertftCLI | None:
    """Runs ``fit``, ``validate``, ``test`` or ``predict`` (LightningCLI), other libraries' noise hidden.

    Args:
        args: Arguments instead of ``sys.argv[1:]`` (a list, or a dict), for tests and notebooks.
        run: Run the subcommand; ``False`` only parses and instantiates.
    """
    with console.quieted():
        # Forked DataLoader workers warn (or hang) when the fast tokenizer's thread pool was used before the fork.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        reuse_freed_memory()  # large activation buffers are kept for the next step, not re-mapped (allocator.py)
        dump_stacks_on_sigusr2()  # a run that seems stuck: `kill -USR2 <pid>` of each rank shows where it waits
        if os.environ.get(TRACE_ENV):
            trace_collectives(os.environ[TRACE_ENV])
        try:
            cli = BertftCLI(args=args, run=run, **cli_kwargs())
        except (ValueError, FileNotFoundError) as err:
            if os.environ.get("BERTFT_DEBUG"):
                raise
            _fail(err)
            raise  # unreachable: _fail exits
        except SIGTERMException as err:
            # 128 + SIGTERM, what a shell reports for a job ended by SIGTERM; schedulers read it as "preempted".
            sys.stderr.write(resume_message(err) + "\n")
            sys.exit(143)
        if run:
            destroy_process_group()
        return cli


def _resolve_last_checkpoint(config: Any) -> None:
    """``fit --ckpt_path last``: the newest ``last.ckpt`` of any earlier run under ``trainer.default_root_dir``.

    Each run gets a new logger version folder, so Lightning's own ``last`` (this run's checkpoints) finds nothing after
    a kill. The run continues in the folder it resumes from where the logger allows (CSV and TensorBoard ``version``).
    With none found it warns and starts afresh, so a scheduler can requeue the same command from the first attempt.
    """
    root = Path(config["trainer"].get("default_root_dir") or ".")
    found = find_last_checkpoint(root)
    if found is None:
        rank_zero_warn(f"--ckpt_path last: no last.ckpt under {root} (trainer.default_root_dir); starting a fresh run")
        config["ckpt_path"] = None
        return
    log_resume(found)
    config["ckpt_path"] = str(found)
    parts = found.relative_to(root).parts  # <logger name>/<version>/checkpoints/last.ckpt
    if len(parts) != 4 or parts[2] != "checkpoints":
        return
    loggers = config["trainer"].get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None or "version" not in init_args or init_args.get("version") is not None:
            continue
        save_dir = Path(init_args.get("save_dir") or root)
        if init_args.get("name") == parts[0] and save_dir.resolve() == root.resolve():
            init_args["version"] = parts[1]  # keep writing metrics and checkpoints into the resumed run's folder


def _fail(err: BaseException) -> Any:
    sys.stderr.write(f"bertft: error: {_reason(err)}\n(set BERTFT_DEBUG=1 for the full traceback)\n")
    sys.exit(2)


def _reason(err: BaseException) -> str:
    """The error's own message; for a data module's ``__init__`` error, without jsonargparse's wrapping.

    The data section is a ``class_path`` union (any data module, or none), so jsonargparse reports a refusal there as
    "Does not validate against any of the Union subtypes", the whole parsed section and one line per subtype; the
    data module's line is the one the user needs.
    """
    text = str(err)
    if not text.startswith("Does not validate against any of the Union subtypes"):
        return text
    reasons = [line[4:] for line in text.splitlines() if line.startswith("  - ") and "NoneType" not in line]
    return "\n".join(reasons) if reasons else text
