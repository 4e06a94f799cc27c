"""Partial and gradual freezing (``freezing``) and early stopping (``early_stopping``), through the command line."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from bertft.cli import main
from bertft.encoder import load_encoder

from .helpers import cli_args, sst2_rows, write_tsv


class GradProbe(L.Callback):
    """Records, before every optimiser step, which encoder levels got gradients and the optimiser's groups."""

    seen: list[tuple[int, list[bool], list[tuple[str, float, float]]]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        encoder = pl_module.encoder
        levels = [encoder.encoder.layer[1], encoder.encoder.layer[0], encoder.embeddings]  # from the top
        got = [all(p.grad is not None for p in level.parameters()) for level in levels]
        groups = [(g["name"], g["lr"], g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        GradProbe.seen.append((trainer.global_step, got, groups))


class CrashAtStep5(L.Callback):
    """Stands for a killed process: fails before optimiser step 5."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == 5:
            raise RuntimeError("crash at step 5")


@pytest.fixture
def fit_args(tmp_path: Path, tiny_bert_dir: Path):
    """``fit_args(out, *extra)``: a deterministic fit of the tiny BERT on 48 real rows, in batches of 6, logger off."""
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 48))

    def args(out: Path, *extra: str) -> list[str]:
        return cli_args(out, "--seed_everything=1", "--trainer.deterministic=true", *extra, encoder=tiny_bert_dir,
                        train=train, quoting=False, batch_size=6, logger=False)  # fmt: skip

    return args


def test_frozen_layers_stay_bit_identical(fit_args, tmp_path: Path, tiny_bert_dir: Path) -> None:
    cli = main(fit_args(tmp_path, "--freezing.train_top_layers=1", "--trainer.max_steps=3"))
    before = load_encoder(str(tiny_bert_dir), with_pooler=False, with_attentions=False).state_dict()
    after = cli.model.encoder.state_dict()
    for name, weight in before.items():
        frozen = name.startswith(("embeddings.", "encoder.layer.0."))
        assert torch.equal(weight, after[name]) == frozen, name


def test_gradual_unfreezing_adds_one_level_every_n_steps_with_its_layer_lr(fit_args, tmp_path: Path) -> None:
    GradProbe.seen = []
    main(fit_args(tmp_path, "--config=configs/callbacks/gradual_unfreezing.yaml", "--freezing.train_top_layers=0",
                  "--freezing.unfreeze_every=2", "--model.layer_lr_decay=0.5", "--model.warmup_ratio=0.0",
                  "--trainer.max_steps=7", "--trainer.callbacks+=tests.test_callbacks.GradProbe"))  # fmt: skip
    trained = {step: got for step, got, _ in GradProbe.seen}
    assert trained == {
        0: [False, False, False], 1: [False, False, False],  # only the head
        2: [True, False, False], 3: [True, False, False],  # + layer 2 (the top)
        4: [True, True, False], 5: [True, True, False],  # + layer 1
        6: [True, True, True],  # + the embeddings
    }  # fmt: skip
    _, _, groups = GradProbe.seen[-1]
    lr = {name: (now, peak) for name, now, peak in groups}
    factor = lr["head"][0] / lr["head"][1]  # where the linear decay stands at step 6
    assert lr["encoder.2.unfrozen1"][1] == pytest.approx(5e-5 * 0.5)  # layer 2 of 2: lr * decay ** (L + 1 - 2)
    assert lr["encoder.1.unfrozen2"][1] == pytest.approx(5e-5 * 0.25)
    assert lr["encoder.0.no_decay.unfrozen3"][1] == pytest.approx(5e-5 * 0.125)  # embeddings never decay
    for now, peak in lr.values():
        assert now == pytest.approx(peak * factor)  # every new group follows the schedule


def test_resume_in_the_middle_of_the_schedule_matches_an_uninterrupted_run(fit_args, tmp_path: Path) -> None:
    schedule = ["--freezing.train_top_layers=0", "--freezing.unfreeze_every=2", "--trainer.max_steps=8",
                "--resume.every_n_steps=3", "--model.layer_lr_decay=0.8"]  # fmt: skip
    whole = main(fit_args(tmp_path / "whole", *schedule))
    broken = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="crash at step 5"):
        main(fit_args(broken, *schedule, "--trainer.callbacks+=tests.test_callbacks.CrashAtStep5"))
    last = broken / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3  # one level of three unfrozen, the next due at step 4
    names = [g["name"] for g in saved["optimizer_states"][0]["param_groups"]]
    assert names == ["head", "head.no_decay", "encoder.2.unfrozen1", "encoder.2.no_decay.unfrozen1"]

    resumed = main(fit_args(broken, *schedule, f"--ckpt_path={last}"))
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for name, weight in a.items():
        assert torch.equal(weight, b[name]), name
    groups_a = [(g["name"], g["lr"]) for g in whole.trainer.optimizers[0].param_groups]
    assert groups_a == [(g["name"], g["lr"]) for g in resumed.trainer.optimizers[0].param_groups]
    freezing = next(c for c in resumed.trainer.callbacks if type(c).__name__ == "LayerFreezing")
    assert freezing.unfrozen == 3


def test_early_stopping_watches_the_tasks_metric_and_stops(fit_args, tmp_path: Path) -> None:
    stsb = main(["--config=configs/stsb.yaml", "--config=configs/callbacks/early_stopping.yaml"], run=False)
    assert (stsb.trainer.early_stopping_callback.monitor, stsb.trainer.early_stopping_callback.mode) == (
        "val/spearman",
        "max",
    )
    # lr 0: the metric never improves, so patience 1 stops at the second validation (step 4 of 20).
    cli = main(fit_args(tmp_path, "--config=configs/callbacks/early_stopping.yaml", "--early_stopping.patience=1",
                        "--data.val_fraction=0.25", "--model.lr=0.0", "--model.head_lr=0.0", "--trainer.max_steps=20",
                        "--trainer.val_check_interval=2"))  # fmt: skip
    assert cli.trainer.early_stopping_callback.monitor == "val/acc"
    assert cli.trainer.global_step == 4
    assert cli.trainer.should_stop
