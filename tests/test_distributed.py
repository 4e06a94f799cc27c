"""Multi-process training on CPU (gloo): DDP matches one process, metrics count every example once, multi-node runs.

Each test starts real processes through the real entry point, as a user's launcher would.
"""

from __future__ import annotations

import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from bertft import FineTuner
from bertft.training.distributed import wrap_encoder_layers

from .ddp import WORKER, assert_same_collectives, free_port, last_collectives, read_collectives, run_worker
from .ddp import worker_results as results
from .helpers import CONFIGS, cli_args, run_bertft, sst2_rows, write_tsv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp_data")
    deterministic = tmp / "deterministic.yaml"  # dropout off: DDP ranks and one process draw different masks
    deterministic.write_text(
        "model:\n  encoder_dropout: 0.0\n  head:\n    class_path: bertft.heads.MeanHead\n"
        "    init_args:\n      dropout: 0.0\n"
    )
    return {
        "train": write_tsv(tmp / "train.tsv", sst2_rows("train", 64)),
        "val": write_tsv(tmp / "val.tsv", sst2_rows("test", 51)),  # 51: not divisible by 2 processes
        "predict": write_tsv(tmp / "predict.tsv", sst2_rows("test", 37)),
        "deterministic": deterministic,
    }


def fit_args(files: dict[str, Path], out: Path, batch_size: int, devices: int) -> list[str]:
    """One epoch of debug.yaml without dropout; the config's logger stays on: DDP once hung only with one."""
    return cli_args(
        out,
        "--data.test_file=null",
        "--trainer.max_epochs=1",  # 64 rows / global batch 16 = 4 optimiser steps
        "--trainer.val_check_interval=null",
        "--trainer.limit_val_batches=null",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        configs=[CONFIGS / "debug.yaml", files["deterministic"]],
        train=files["train"],
        val=files["val"],
        batch_size=batch_size,
        max_steps=-1,
    )


@pytest.fixture(scope="module")
def single_and_ddp(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same fit on the real MiniLM and real rows: 1 process x batch 16, and 2 DDP processes x batch 8."""
    out = tmp_path_factory.mktemp("ddp_runs")
    single = run_worker(fit_args(files, out / "single", 16, devices=1), devices=1)
    ddp = run_worker(fit_args(files, out / "ddp", 8, devices=2))
    return {"out": out, "single": single, "ddp": ddp}


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(single_and_ddp: dict) -> None:
    out = single_and_ddp["out"]
    assert sorted(r["rank"] for r in single_and_ddp["ddp"]) == [0, 1]
    assert len({r["sha256"] for r in single_and_ddp["ddp"]}) == 1  # the ranks agree
    one = torch.load(next((out / "single").rglob("last.ckpt")), weights_only=True)
    two = torch.load(next((out / "ddp").rglob("last.ckpt")), weights_only=True)
    assert one["global_step"] == two["global_step"] == 4
    diffs = {k: (one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"]}
    worst = max(diffs, key=diffs.get)
    # Tolerance: the ranks pad their halves of a batch differently, so sums run in another order (float32 noise).
    assert diffs[worst] < 1e-5, (worst, diffs[worst])
    # The learning-rate schedule stepped once per optimiser step in both.
    assert one["lr_schedulers"][0]["last_epoch"] == two["lr_schedulers"][0]["last_epoch"] == 4


@pytest.mark.slow
def test_ddp_validation_counts_every_example_once(single_and_ddp: dict) -> None:
    single = single_and_ddp["single"][0]["metrics"]
    ddp = next(r for r in single_and_ddp["ddp"] if r["rank"] == 0)["metrics"]
    for key in ("val/acc", "val/f1", "val/mcc"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.slow
def test_ddp_predict_equals_single_process_row_for_row(files: dict[str, Path], single_and_ddp: dict) -> None:
    out = single_and_ddp["out"]
    ckpt = next((out / "single").rglob("last.ckpt"))
    tables = {}
    for devices in (1, 2):
        target = out / f"predictions-{devices}.csv"
        args = cli_args(
            out / "predict", f"--ckpt_path={ckpt}", "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
            f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}", f"--prediction.output_file={target}",
            command="predict", configs=[CONFIGS / "debug.yaml"], train=files["train"], predict=files["predict"],
            batch_size=8, progress_bar=True,
        )  # fmt: skip
        run_worker(args, devices=devices)
        with open(target, encoding="utf-8") as f:
            tables[devices] = list(csv.DictReader(f))
    assert len(tables[1]) == 37
    assert [r["sentence"] for r in tables[2]] == [r["sentence"] for r in tables[1]]
    assert [r["prediction"] for r in tables[2]] == [r["prediction"] for r in tables[1]]
    for a, b in zip(tables[1], tables[2], strict=True):
        assert float(a["prob_1"]) == pytest.approx(float(b["prob_1"]), abs=1e-5)


@pytest.mark.slow
def test_two_nodes_on_one_machine_with_bf16(files: dict[str, Path], tiny_bert_dir: Path, tmp_path: Path) -> None:
    """num_nodes=2, one process each, started by hand with Lightning's environment variables (as SLURM or a
    scheduler would); bf16-mixed on CPU; the default logger on. Both finish, agree on the weights, and exit 0."""
    args = [
        *fit_args(files, tmp_path, 8, devices=1),
        f"--model.encoder={tiny_bert_dir}",
        "--trainer.num_nodes=2",
        "--trainer.strategy=ddp",
        "--trainer.precision=bf16-mixed",
    ]
    trace = tmp_path / "trace"
    env = {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "LOCAL_RANK": "0", "BERTFT_RESULT_DIR": str(tmp_path), "BERTFT_TRACE_COLLECTIVES": str(trace)}  # fmt: skip

    def node(rank: int) -> str:
        return run_bertft(*args, command=[sys.executable, str(WORKER)], env={**env, "NODE_RANK": str(rank)},
                          on_timeout=lambda: last_collectives(trace)).stderr  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        errors = list(pool.map(node, (0, 1)))
    for err in errors:
        assert "terminate called" not in err
    assert_same_collectives(read_collectives(trace), world_size=2)
    reports = results(tmp_path)
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert reports[0]["sha256"] == reports[1]["sha256"]
    writers = {p.name.split(".")[-2] for p in tmp_path.rglob("events.out.tfevents*")}  # ...<host>.<pid>.<n>
    assert len(writers) == 1  # rank 0 alone writes the logger's files


def test_fsdp_config_parses_and_wraps_each_encoder_layer(tiny_bert_dir: Path) -> None:
    """On CPU only the parts: Lightning refuses FSDP with the CPU accelerator (see the GPU test below)."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    config = yaml.safe_load((CONFIGS / "trainer" / "fsdp.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": config["trainer"]["strategy"]})).strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"] is wrap_encoder_layers

    model = FineTuner(str(tiny_bert_dir))
    wrapped = [m for m in model.modules() if wrap_encoder_layers(m, recurse=False, nonwrapped_numel=0)]
    layers = list(model.encoder.encoder.layer)
    assert len(wrapped) == len(layers) == 2
    assert all(a is b for a, b in zip(wrapped, layers, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: Lightning's FSDP refuses the CPU")
def test_fsdp_and_bf16_fit_on_gpu(files: dict[str, Path], tmp_path: Path) -> None:
    devices = torch.cuda.device_count()
    run_worker(
        [
            *fit_args(files, tmp_path, 8, devices=1), "--config", str(CONFIGS / "trainer" / "fsdp.yaml"),
            "--trainer.accelerator=gpu", f"--trainer.devices={devices}",
        ],
        devices=devices,
    )  # fmt: skip
    assert list(tmp_path.rglob("last.ckpt"))
