"""Faults: a killed fit resumes exactly, SIGTERM saves a checkpoint, NaN loss stops cleanly, writes are atomic."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertft.cli import main
from bertft.data.sampler import LengthGroupedBatchSampler, ResumableDataLoader
from bertft.io import atomic_write_text
from bertft.training.faults import AtomicCheckpointIO

from .helpers import ROOT, cli_args, kill_once_written, last_lr, resume_fit_args, run_bertft, sst2_rows, write_tsv


def lengths(n: int = 37) -> list[int]:
    return [(i * 7) % 23 + 1 for i in range(n)]


# ----- the sampler's and loader's position -------------------------------------------------------------------------


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_sampler_state_round_trip_resumes_mid_epoch(num_replicas: int) -> None:
    for rank in range(num_replicas):
        sampler = LengthGroupedBatchSampler(lengths(), 4, seed=3, mega_batches=2, num_replicas=num_replicas, rank=rank)
        sampler.set_epoch(1)
        full = list(sampler)
        it = iter(sampler)
        head = [next(it) for _ in range(3)]
        state = sampler.state_dict()
        assert (state["batches_done"], state["epoch"]) == (3, 1)

        fresh = LengthGroupedBatchSampler(lengths(), 4, seed=3, mega_batches=2, num_replicas=num_replicas, rank=rank)
        fresh.load_state_dict(state)
        assert fresh.epoch == 1
        assert head + list(fresh) == full  # the rest, nothing twice
        assert list(fresh) == full  # only the interrupted pass skips
        fresh.set_epoch(2)
        assert len(list(fresh)) == len(fresh)


def test_sampler_skip_applies_only_to_the_saved_epoch() -> None:
    sampler = LengthGroupedBatchSampler(lengths(), 4, seed=3)
    sampler.load_state_dict({"epoch": 0, "batches_done": len(sampler)})  # saved at the end of epoch 0
    sampler.set_epoch(1)  # Lightning moves on to the next epoch
    assert len(list(sampler)) == len(sampler)


def test_sampler_refuses_a_position_from_another_batch_layout() -> None:
    state = LengthGroupedBatchSampler(lengths(), 4, seed=3).state_dict()
    with pytest.raises(ValueError, match="global_batch_size=4, this run has 8"):
        LengthGroupedBatchSampler(lengths(), 8, seed=3).load_state_dict(state)


def test_loader_counts_batches_received_not_fetched_ahead() -> None:
    data = list(range(37))

    def loader() -> ResumableDataLoader:
        sampler = LengthGroupedBatchSampler(lengths(), 4, seed=1, mega_batches=2)
        return ResumableDataLoader(data, batch_sampler=sampler, collate_fn=list, generator=torch.Generator())

    first = loader()
    full = list(first)
    it = iter(first)
    head = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["batches_done"] == 4
    second = loader()
    second.load_state_dict(state)
    assert head + list(second) == full


# ----- kill -9 and resume on the real MiniLM -----------------------------------------------------------------------


#: The second kind of checkpoint: a linear probe's holds only the head (the frozen encoder comes from the base).
PROBE = ("--model.freeze_encoder=true", "--model.head=bertft.heads.WeightedLayersHead")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), PROBE], ids=["full", "probe"])
def test_sigkill_mid_epoch_then_ckpt_path_last_matches_an_uninterrupted_run(tmp_path: Path, extra: tuple) -> None:
    # 15 real SST-2 rows, batches of 5: 3 optimiser steps per epoch, 2 epochs; last.ckpt every 2 steps, so the first
    # one is written mid-epoch (step 2 of 3). Small because every checkpoint of MiniLM with AdamW is 270 MB.
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 15))
    val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 10))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_bertft(*resume_fit_args(whole, train, val, *extra), timeout=600)

    last = broken / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    run_bertft(*resume_fit_args(broken, train, val, *extra), timeout=600, returncode=-signal.SIGKILL,
               while_running=kill_once_written(last))  # fmt: skip
    interrupted = torch.load(last, map_location="cpu", weights_only=True)
    assert 0 < interrupted["global_step"] < 6  # killed before the end...
    assert interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] > 0  # ...mid-epoch

    resumed = run_bertft(*resume_fit_args(broken, train, val, *extra, "--ckpt_path=last"), timeout=600)
    assert f"Resuming from {last}" in resumed.stderr
    assert not (broken / "csv" / "version_1").exists()  # the resumed run continued in the killed run's folder

    a = torch.load(whole / "csv" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(k.startswith("head.") for k in a["state_dict"]) == (extra == PROBE)  # tens of kB in a probe's
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name  # bit-equal, dropout masks and data order included
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert last_lr(whole / "csv" / "version_0" / "metrics.csv") == last_lr(broken / "csv" / "version_0" / "metrics.csv")


def test_ckpt_path_last_without_a_checkpoint_starts_afresh(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 8))
    with pytest.warns(UserWarning, match="no last.ckpt under .*starting a fresh run"):
        main(cli_args(tmp_path, "--ckpt_path=last", encoder=tiny_bert_dir, train=train, quoting=False, max_steps=1,
                      logger=False))  # fmt: skip
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ----- SIGTERM -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_at_a_step_boundary_and_says_how_to_resume(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 40))
    args = cli_args(tmp_path, "--resume.every_n_steps=7", "--trainer.accelerator=cpu", encoder=tiny_bert_dir,
                    train=train, quoting=False, batch_size=2, logger=False)  # fmt: skip
    last = tmp_path / "checkpoints" / "last.ckpt"

    def terminate_after_the_periodic_save(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # a few steps past the periodic save
        proc.send_signal(signal.SIGTERM)

    err = run_bertft(*args, "--trainer.max_epochs=1000", timeout=240, returncode=143,
                     while_running=terminate_after_the_periodic_save).stderr  # fmt: skip
    message = err.strip().splitlines()[-1]
    assert message.startswith("bertft: stopped by SIGTERM after optimiser step ")
    assert f"checkpoint saved to {last}" in message
    assert "--ckpt_path last" in message
    step = int(message.split("optimiser step ")[1].split(";")[0])
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == step > 7  # written at the step where it stopped, not only every 7 steps

    # It resumes from there, in-process, for one more epoch.
    epoch = saved["epoch"]
    cli = main([*args, f"--trainer.max_epochs={epoch + 1}", "--ckpt_path=last"])
    assert cli.trainer.global_step == (epoch + 1) * 20


# ----- NaN / inf loss ----------------------------------------------------------------------------------------------


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import bertft.tasks

    real_loss, calls = bertft.tasks.loss, []

    def loss_nan_from_step_7(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = real_loss(task, logits, labels)
        calls.append(1)
        return value * math.nan if len(calls) >= 7 else value

    monkeypatch.setattr(bertft.tasks, "loss", loss_nan_from_step_7)
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 40))
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(tmp_path, "--resume.every_n_steps=3", "--trainer.log_every_n_steps=4", encoder=tiny_bert_dir,
                      train=train, quoting=False, batch_size=2, logger=False))  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bertft: error: the training loss became non-finite (NaN or inf) at optimiser step 7" in err
    for fix in ("lower learning rate", "gradient_clip_val", "training data"):
        assert fix in err
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["global_step"] == 6  # the step before it went wrong
    assert all(torch.isfinite(w).all() for w in kept["state_dict"].values())


# ----- atomic writes -----------------------------------------------------------------------------------------------

SLOW_WRITER = """
import importlib.util, sys, threading, time

# bertft/io.py alone (standard library only), without the package's torch and transformers imports: fast to start.
spec = importlib.util.spec_from_file_location("bertft_io", "bertft/io.py")
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
real_fdopen = io.os.fdopen

class Slow:
    def __init__(self, f): self.f = f
    def __getattr__(self, name): return getattr(self.f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): return self.f.__exit__(*exc)
    def write(self, text):
        for i in range(0, len(text), 4096):
            self.f.write(text[i : i + 4096]); self.f.flush()
            if i == 40960: sys.stdout.write("writing\\n"); sys.stdout.flush()  # one write: print's two interleave
            time.sleep(0.001)

io.os.fdopen = lambda *a, **k: Slow(real_fdopen(*a, **k))
for path in sys.argv[1:]:
    threading.Thread(target=io.atomic_write_text, args=(path, "new " * 10_000_000)).start()
"""


def test_sigkill_during_an_atomic_write_leaves_no_truncated_file(tmp_path: Path) -> None:
    old, new = tmp_path / "config.yaml", tmp_path / "fresh.yaml"
    old.write_text("old: complete\n")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(old), str(new)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert [proc.stdout.readline().strip() for _ in range(2)] == ["writing", "writing"]  # both files half-written
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert old.read_text() == "old: complete\n"  # the old complete content...
    assert not new.exists()  # ...or nothing, never a truncated file under the real name
    partial = sorted(p for p in tmp_path.iterdir() if p.name.startswith("."))
    assert [p.name.split(".")[1] for p in partial] == ["config", "fresh"]
    assert all(p.stat().st_size > 40960 for p in partial)  # the kill did land mid-write, in the temporary files


def test_checkpoint_writer_keeps_the_old_file_when_a_save_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)

    def dies_halfway(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    atomic_write_text(tmp_path / "a" / "b.txt", "ok")
    assert (tmp_path / "a" / "b.txt").read_text() == "ok"
