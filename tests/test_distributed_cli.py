"""The shipped configurations under DDP, through the real command line, with their loggers on.

Two CPU processes (gloo) each. Every run goes through :func:`tests.ddp.launch`: it must end in time and every rank
must call the same collectives in the same order. The README's DDP command once hung whenever a logger was on
(a broadcast on rank 0 alone), while every DDP test passed with ``--trainer.logger=false``; none of these turns a
logger off. The point here is the collectives, so the encoder is tiny except in the README's own command.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertft.training.faults import find_last_checkpoint

from .ddp import free_port, launch
from .helpers import cli_args, sst2_rows, write_tsv

pytestmark = pytest.mark.slow

# The README's multi-device command (`--config configs/quickstart.yaml --config configs/trainer/ddp.yaml
# --trainer.devices 2`), on 2 CPU processes.
README_DDP = ["configs/quickstart.yaml", "configs/trainer/ddp.yaml"]
TENSORBOARD = "configs/loggers/tensorboard.yaml"


def ddp_args(out: Path, *extra: str, configs: list[str] = README_DDP, **options: object) -> list[str]:
    """The README's DDP command on 2 CPU processes, writing to ``out``, with the configs' loggers on."""
    return cli_args(out, "--trainer.devices=2", "--trainer.accelerator=cpu", *extra, configs=configs, **options)


@pytest.fixture(scope="module")
def sst2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("ddp_cli_data")
    return {
        "train": write_tsv(tmp / "train.tsv", sst2_rows("train", 600)),
        "val": write_tsv(tmp / "val.tsv", sst2_rows("test", 51)),  # 51: not divisible by 2 processes
        "test": write_tsv(tmp / "test.tsv", sst2_rows("test", 40)),
        "predict": write_tsv(tmp / "predict.tsv", sst2_rows("test", 37)),
    }


@pytest.fixture(scope="module")
def small(sst2: dict[str, str], tiny_bert_dir: Path) -> dict[str, object]:
    """The tiny encoder on the small SST-2 files: :func:`ddp_args`' options where the point is the collectives."""
    return {"encoder": tiny_bert_dir, "train": sst2["train"], "val": sst2["val"], "test": sst2["test"], "batch_size": 8}


def test_readme_ddp_command_finishes_with_the_csv_logger(tmp_path: Path) -> None:
    """The README's command as written (the real MiniLM, bundled SST-2, the quickstart's CSV logger), shortened."""
    run = launch(
        ddp_args(tmp_path, "--trainer.max_steps=10", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
                 "--trainer.val_check_interval=5"),
        timeout=420,
    )  # fmt: skip
    versions = list((tmp_path / "csv").iterdir())
    assert [v.name for v in versions] == ["version_0"]  # one run folder, written by rank 0 alone
    run_dir = versions[0]
    assert (run_dir / "config.yaml").is_file()
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/acc") for r in rows)
    assert any(r.get("test/acc") for r in rows)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2, checkpoints  # the best by val/acc, and last
    assert "last.ckpt" in checkpoints
    assert "test/acc" in run.stdout


def test_readme_torchrun_command(small: dict[str, object], tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m bertft fit ...`` as the README writes it, with the quickstart's CSV logger."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "-m", "bertft"]  # fmt: skip
    run = launch(ddp_args(tmp_path, "--trainer.val_check_interval=2", max_steps=4, **small), command=torchrun)
    assert "terminate called" not in run.stderr
    assert [v.name for v in (tmp_path / "csv").iterdir()] == ["version_0"]
    assert (tmp_path / "csv" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture(scope="module")
def tensorboard_fit(small: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fit with the TensorBoard logger layered as the README says; its run folder."""
    out = tmp_path_factory.mktemp("ddp_tensorboard")
    launch(ddp_args(out, "--trainer.val_check_interval=2", configs=[*README_DDP, TENSORBOARD], max_steps=4, **small))
    (run_dir,) = (out / "tensorboard").iterdir()
    return run_dir


def test_fit_with_tensorboard_logs_once(tensorboard_fit: Path) -> None:
    writers = {p.name.split(".")[-2] for p in tensorboard_fit.glob("events.out.tfevents*")}  # ...<host>.<pid>.<n>
    assert len(writers) == 1  # one process (rank 0) writes the logger's files
    assert (tensorboard_fit / "config.yaml").is_file()
    assert (tensorboard_fit / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_from_a_checkpoint(
    subcommand: str, tensorboard_fit: Path, small: dict[str, object], tmp_path: Path
) -> None:
    ckpt = tensorboard_fit / "checkpoints" / "last.ckpt"
    run = launch(
        ddp_args(tmp_path, f"--ckpt_path={ckpt}", command=subcommand, configs=[*README_DDP, TENSORBOARD], **small)
    )
    metric = "val/acc" if subcommand == "validate" else "test/acc"
    assert metric in run.stdout


def test_predict_writes_every_row_in_input_order(
    tensorboard_fit: Path, sst2: dict[str, str], small: dict[str, object], tmp_path: Path
) -> None:
    """No --prediction.output_file: the file goes to the logger's folder, which every rank must ask for."""
    ckpt = tensorboard_fit / "checkpoints" / "last.ckpt"
    launch(
        ddp_args(tmp_path, f"--ckpt_path={ckpt}", command="predict", configs=[*README_DDP, TENSORBOARD],
                 predict=sst2["predict"], **small)
    )  # fmt: skip
    (written,) = tmp_path.rglob("predictions.csv")
    with open(written, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["sentence"] for r in rows] == [sentence for sentence, _ in sst2_rows("test", 37)]


def test_sigterm_stops_every_rank_with_one_checkpoint_then_resumes_with_wandb(
    small: dict[str, object], tmp_path: Path
) -> None:
    """SIGTERM to the command (what a scheduler sends): every rank stops, last.ckpt holds the step, exit 143; then
    ``--ckpt_path last`` finishes the run. The W&B logger (offline) is on throughout."""
    args = ddp_args(tmp_path, "--resume.every_n_steps=3", "--trainer.val_check_interval=null",
                    configs=[*README_DDP, "configs/loggers/wandb.yaml"], **small)  # fmt: skip

    def terminate_after_first_save(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 240
        while not list(tmp_path.rglob("last.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)

    run = launch([*args, "--trainer.max_epochs=1000"], returncode=143, while_running=terminate_after_first_save)
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith("bertft: stopped by SIGTERM after optimiser step "), run.stderr[-3000:]
    (last,) = tmp_path.rglob("last.ckpt")
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # one checkpoint, no last-v1.ckpt
    step = int(message.split("optimiser step ")[1].split(";")[0])
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step >= 3

    launch([*args, f"--trainer.max_steps={step + 3}", "--ckpt_path=last"])
    resumed = find_last_checkpoint(tmp_path)  # a W&B run keeps its checkpoints under its own (new) run id
    assert torch.load(resumed, map_location="cpu", weights_only=True)["global_step"] == step + 3
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("config", ["stsb.yaml", "conll2003.yaml"])
def test_regression_and_token_configs(config: str, tiny_bert_dir: Path, tmp_path: Path) -> None:
    """The STS-B (regression, sentence pairs) and CoNLL-2003 (token tags) configs on their bundled data."""
    run = launch(
        ddp_args(tmp_path, "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
                 "--trainer.limit_test_batches=2", configs=[f"configs/{config}", "configs/trainer/ddp.yaml"],
                 encoder=tiny_bert_dir, max_steps=4)
    )  # fmt: skip
    metric = "test/spearman" if config == "stsb.yaml" else "test/f1"
    assert metric in run.stdout
    assert len(list(tmp_path.rglob("last.ckpt"))) == 1
