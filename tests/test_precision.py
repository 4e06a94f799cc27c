"""The default precision: bf16 only on hardware that runs it faster, recorded in the saved config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bertft.cli import main
from bertft.training import precision

from .helpers import cli_args, sst2_rows, write_tsv


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Clears the cached choice before and after: a pretended AMX must not leak into the tests that run later."""
    precision.default_precision.cache_clear()
    yield
    precision.default_precision.cache_clear()


@pytest.mark.parametrize(
    ("cuda", "cuda_bf16", "amx", "expected"),
    [
        (False, False, False, "32-true"),  # this project's CPUs: bf16 measured 0.67x fp32
        (False, False, True, "bf16-mixed"),  # AMX: native bf16 matmuls
        (True, True, False, "bf16-mixed"),  # Ampere and newer
        (True, False, False, "32-true"),  # older GPUs emulate bf16
    ],
)
def test_default_follows_the_hardware(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, cuda_bf16: bool, amx: bool, expected: str
) -> None:
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: cuda_bf16)
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: amx)
    assert precision.default_precision("auto") == expected


def test_accelerator_cpu_ignores_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: False)
    assert precision.default_precision("cpu") == "32-true"


def test_cli_fills_an_unset_precision_and_keeps_a_given_one(
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: True)  # pretend AMX: the choice must show
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 16))
    args = cli_args(tmp_path, command=None, encoder=tiny_bert_dir, train=train, quoting=False, logger=False)
    cli = main(args, run=False)
    assert cli.config["trainer"]["precision"] == "bf16-mixed"  # recorded, so the saved config.yaml says it
    assert cli.trainer.precision == "bf16-mixed"
    cli = main([*args, "--trainer.precision=32-true"], run=False)
    assert cli.trainer.precision == "32-true"
