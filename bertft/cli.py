"""The command line: ``python -m bertft fit|validate|test|predict --config a.yaml``, on LightningCLI."""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from jsonargparse._common import debug_mode_active
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from bertft.data import TextDataModule
from bertft.distributed import destroy_process_group
from bertft.loggers import ConfigToLoggers, finish_loggers
from bertft.model import FineTuner
from bertft.precision import default_precision
from bertft.prediction import PredictionWriter
from bertft.tasks import PRIMARY_METRIC
from bertft.tracking import LearningRateMonitor, Tracker


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


def _known_keys(parser: ArgumentParser) -> set[str]:
    keys = {opt.lstrip("-") for action in parser._actions for opt in action.option_strings}
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        keys |= _known_keys(sub)
    return keys


def _suggestion(parser: ArgumentParser, message: str) -> str:
    keys = _known_keys(parser)
    dotted = set(re.findall(r"[A-Za-z_]\w*(?:\.\w+)+", message)) - keys
    hints = []
    for key in sorted(dotted):
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
        if close:
            hints.append(f"{key!r}: did you mean {' or '.join(repr(c) for c in close)}?")
    return ("\n" + "\n".join(hints)) if hints else ""


def _monitor(task: str) -> str:
    return "val/" + PRIMARY_METRIC.get(task, "loss")


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

    def before_instantiate_classes(self) -> None:
        """Reuses the checkpoint's label vocabulary when ``test`` / ``predict`` run without the training file."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        data, model = config["data"], config["model"]
        data = data.get("init_args", data)  # subclass mode: the data module's arguments sit under init_args
        if not data.get("train_file") and not data.get("label_names") and model.get("label_names"):
            data["label_names"] = model["label_names"]
        trainer = config["trainer"]
        if trainer.get("precision") is None:  # unset: bf16 only where the hardware runs it faster (bertft.precision)
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
        """Without validation data there is no metric to pick a best checkpoint by: keep ``last.ckpt`` only."""
        if self.datamodule.hparams.get("val_file"):
            return
        for callback in self.trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor:
                rank_zero_warn(f"no data.val_file: no best checkpoint by {callback.monitor}; last.ckpt is kept")
                callback.monitor = None
                callback.save_top_k = 1

    def after_fit(self) -> None:
        """Reports the test metrics of the best checkpoint when the data names a test file."""
        data = self.datamodule
        if not data.hparams.get("test_file") or self.trainer.fast_dev_run:
            return
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
        self.trainer.test(self.model, datamodule=data, ckpt_path="best" if best else None)


def main(args: ArgsType = None, run: bool = True) -> BertftCLI | None:
    """Runs the command line: ``fit``, ``validate``, ``test`` and ``predict`` (LightningCLI), and ``export``.

    Args:
        args: Arguments instead of ``sys.argv[1:]`` (a list, or a dict), for tests and notebooks.
        run: Run the subcommand; ``False`` only parses and instantiates.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["export"]:
        from bertft.export import main as export_main

        export_main(argv[1:])
        return None
    # Forked DataLoader workers warn (or hang) when the fast tokenizer's thread pool was used before the fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cli = BertftCLI(
            FineTuner,
            TextDataModule,
            subclass_mode_data=True,  # any TextDataModule subclass, e.g. bertft.data.TokenDataModule
            args=args,
            run=run,
            # The model builds its own parameter groups (no-decay, layer-wise decay, head and mixing learning
            # rates); LightningCLI's automatic optimiser would silently replace them.
            auto_configure_optimizers=False,
            save_config_callback=ConfigToLoggers,  # the config reaches every logger once, with versions and commit
            save_config_kwargs={"overwrite": True},
            parser_class=BertftArgumentParser,
            parser_kwargs={"prog": "bertft", "description": "Fine-tune BERT-family encoders with pluggable heads."},
            # The data module shards its length-grouped batches across ranks itself (bertft.data.sampler).
            trainer_defaults={"default_root_dir": "outputs", "use_distributed_sampler": False},
        )
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("BERTFT_DEBUG"):
            raise
        _fail(err)
        raise  # unreachable: _fail exits
    if run:
        destroy_process_group()
    return cli


def _fail(err: BaseException) -> Any:
    sys.stderr.write(f"bertft: error: {err}\n(set BERTFT_DEBUG=1 for the full traceback)\n")
    sys.exit(2)
