"""What a run prints: progress lines in logs, a model summary without empty FLOPs, other libraries' noise hidden.

The real command's console (a subprocess whose stdout is not a terminal) is checked in
``test_cli.py::test_fit_test_predict_end_to_end_on_real_data``.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities import rank_zero_info

from bertft import FineTuner
from bertft.cli import main
from bertft.data import TextDataModule
from bertft.training import console
from bertft.training.console import PlainModelSummary, ProgressLog, RichSummary

from .helpers import CONFIGS, cli_args, quiet_trainer, sst2_rows, write_tsv

LINE = re.compile(
    r"^step (\d+)/(\d+) \| epoch 0 \| loss (\d+\.\d{4}) \| (\d+\.\d) samples/s \| elapsed \d+:\d\d \| ETA \d+:\d\d$"
)


def tiny_fit(tmp_path: Path, tiny_bert_dir: Path, callback: ProgressLog, **trainer: object) -> L.Trainer:
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 48))
    val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 16))
    data = TextDataModule(
        train_file=str(train),
        val_file=str(val),
        tokenizer=str(tiny_bert_dir),
        quoting=False,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    model = FineTuner(str(tiny_bert_dir), num_labels=data.num_labels, label_names=data.label_names)
    options = dict(
        max_steps=6,
        val_check_interval=4,  # batches: with accumulate_grad_batches=2, every 2 optimiser steps
        limit_val_batches=2,
        num_sanity_val_steps=0,
        enable_progress_bar=None,  # Lightning's default: on, as in a user's run
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    fit = quiet_trainer(**{**options, **trainer})
    fit.fit(model, data)
    return fit


def test_progress_lines_every_n_steps(tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    callback = ProgressLog(every_n_seconds=0, every_n_steps=2, enabled=True)
    trainer = tiny_fit(tmp_path, tiny_bert_dir, callback, accumulate_grad_batches=2)
    out = capsys.readouterr().out.splitlines()
    lines = [LINE.match(line) for line in out if line.startswith("step ")]
    assert all(lines), out
    assert [(int(m[1]), int(m[2])) for m in lines] == [(2, 6), (4, 6), (6, 6)]  # optimiser steps, not batches
    for m in lines:
        # The loss is per optimiser step, whatever the accumulation: about ln 2 for a fresh 2-class head.
        assert 0.3 < float(m[3]) < 1.5
        assert float(m[4]) > 0
    validations = [line for line in out if line.startswith("validation at step ")]
    assert [line.split(":")[0] for line in validations] == [f"validation at step {s}" for s in (2, 4, 6)]
    assert "val/acc" in validations[0]
    assert "val/loss" in validations[0]
    assert trainer.progress_bar_callback is not None
    assert trainer.progress_bar_callback.is_disabled


def test_progress_lines_by_the_clock(
    tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(0, 10_000, 7))  # every reading 7 s later than the one before
    monkeypatch.setattr(console.time, "perf_counter", lambda: float(next(clock)))
    tiny_fit(tmp_path, tiny_bert_dir, ProgressLog(every_n_seconds=20, enabled=True))
    steps = [int(m[1]) for line in capsys.readouterr().out.splitlines() if (m := LINE.match(line))]
    assert steps
    assert len(steps) < 6  # not one line per step: only when 20 s have passed


def test_no_progress_lines_in_a_terminal_or_without_a_bar(
    tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    trainer = tiny_fit(tmp_path, tiny_bert_dir, ProgressLog(every_n_seconds=0, every_n_steps=1))
    assert trainer.progress_bar_callback is not None
    assert trainer.progress_bar_callback.is_enabled
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    capsys.readouterr()
    tiny_fit(tmp_path, tiny_bert_dir, ProgressLog(every_n_seconds=0, every_n_steps=1), enable_progress_bar=False)
    assert "step " not in capsys.readouterr().out


def test_progress_log_rejects_negative_intervals() -> None:
    with pytest.raises(ValueError, match="every_n_seconds"):
        ProgressLog(every_n_seconds=-1)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_hides_tips_and_the_leafspec_warning_and_unquiet_restores() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = Records()
    logger.addHandler(records)
    from lightning.pytorch.utilities._pytree import _tree_flatten
    from transformers.utils import logging as hf_logging

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # what a user would see, whatever pytest's own filters
            console.quiet()
            console.quiet()  # twice is harmless
            rank_zero_info("💡 Tip: try installing something")
            rank_zero_info("precision: 32-true")  # bertft's own lines go through the same logger
            _tree_flatten(1)  # Lightning's own code: torch warns that LeafSpec is deprecated
            assert not hf_logging.is_progress_bar_enabled()
            assert not [w for w in caught if "LeafSpec" in str(w.message)]
            console.unquiet()
            _tree_flatten(1)
            assert [w for w in caught if "LeafSpec" in str(w.message)]
        assert hf_logging.is_progress_bar_enabled()
        rank_zero_info("💡 Tip: shown again")
    finally:
        console.unquiet()
        logger.removeHandler(records)
    assert records.messages == ["precision: 32-true", "💡 Tip: shown again"]


def test_the_cli_shows_library_output_on_request(tiny_bert_dir: Path) -> None:
    """The flag is parsed and puts the hidden output back before the model and trainer are built."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = Records()
    logger.addHandler(records)
    config = str(CONFIGS / "quickstart.yaml")
    try:
        for flag in ([], ["--show_library_output=true"]):
            main(["--config", config, f"--model.encoder={tiny_bert_dir}", *flag], run=False)
    finally:
        logger.removeHandler(records)
    tips = [m for m in records.messages if m.startswith("💡 Tip:")]
    assert len(tips) == 1  # the trainer's litlogger tip, only with the flag


def test_model_summary_leaves_out_flops_it_did_not_count(
    tmp_path: Path, tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_args(tmp_path, command=None, configs=[CONFIGS / "quickstart.yaml"], encoder=tiny_bert_dir, logger=False)
    cli = main(args, run=False)
    assert cli is not None
    summaries = [c for c in cli.trainer.callbacks if isinstance(c, RichModelSummary | PlainModelSummary)]
    assert len(summaries) == 1
    assert type(summaries[0]) in (RichSummary, PlainModelSummary)
    data = [("Name", ["encoder"]), ("Params", ["22 K"]), ("FLOPs", ["0"])]
    RichSummary.summarize(data, 22_000, 22_000, 0.09, {"train": 1, "eval": 0}, total_flops=0)
    with caplog.at_level(logging.INFO):
        PlainModelSummary.summarize(data, 22_000, 22_000, 0.09, {"train": 1, "eval": 0}, total_flops=0)
    printed = capsys.readouterr().out + caplog.text
    assert "encoder" in printed
    assert "Total params" in printed
    assert "FLOP" not in printed.upper()
    RichSummary.summarize(data, 22_000, 22_000, 0.09, {"train": 1, "eval": 0}, total_flops=5_000)
    assert "Total FLOPs" in capsys.readouterr().out  # counted FLOPs are shown
