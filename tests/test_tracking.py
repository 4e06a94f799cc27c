"""Experiment tracking, offline: a real short fit logged to W&B (read back by wandb itself), TensorBoard and CSV."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bertft.cli import main
from bertft.training.loggers import WandbLogger, redact, wandb_login_found

from .helpers import CONFIGS, ROOT, cli_args, sst2_rows, write_tsv

LOGGERS = CONFIGS / "loggers"
FAKE_KEY = "local-fake0123456789abcdef0123456789abcdef01"  # planted: must never reach a file
MAX_STEPS, LOG_EVERY = 6, 2


def fit(tmp_path: Path, encoder: Path, *configs: str | Path) -> None:
    """A real fit of the tiny encoder on real SST-2 rows: 6 steps, validation at steps 3 and 6, then the test set."""
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 48))  # 6 batches of 8
    val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 24))
    args = cli_args(
        tmp_path / "run",
        f"--trainer.log_every_n_steps={LOG_EVERY}",
        "--trainer.val_check_interval=3",
        "--trainer.enable_model_summary=false",
        configs=[CONFIGS / "debug.yaml", CONFIGS / "heads" / "weighted.yaml", *configs],
        encoder=encoder,
        train=train,
        val=val,
        test=val,
        batch_size=8,
        max_steps=MAX_STEPS,
        cache_dir=tmp_path / "cache",
    )
    main(args)


def leet(*args: str) -> str:
    """Runs wandb's own reader of the ``.wandb`` transaction log."""
    wandb = Path(sys.executable).with_name("wandb")
    result = subprocess.run([str(wandb), "leet", "inspect", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> tuple[Path, dict, list[dict], str]:
    """A fit with configs/loggers/wandb.yaml, offline, with a fake API key in the environment."""
    tmp_path = tmp_path_factory.mktemp("wandb_fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", FAKE_KEY)
        mp.setenv("WANDB_MODE", "offline")  # conftest sets it too: no test reaches a server
        fit(tmp_path, tiny_bert_dir, LOGGERS / "wandb.yaml")
    run_dirs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1, run_dirs
    summary = json.loads(leet("--summary", "--json", str(run_dirs[0])))
    records = [json.loads(line) for line in leet("--json", str(run_dirs[0])).splitlines() if line.strip()]
    return tmp_path, summary, records, str(run_dirs[0])


def history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_wandb_run_config_holds_the_resolved_config_once(wandb_run) -> None:
    _, summary, _, run_dir = wandb_run
    config = summary["config"]
    assert config["model"]["head"]["class_path"] == "bertft.heads.WeightedLayersHead"
    assert Path(config["model"]["encoder"]).name.startswith("tiny_bert")
    assert config["trainer"]["logger"]["class_path"] == "bertft.training.loggers.WandbLogger"
    # Once: the model's and data's hyperparameters are not repeated at the root (the stock Lightning behaviour).
    assert not {"encoder", "head", "lr", "train_file"} & set(config)
    assert set(config["run_info"]["packages"]) >= {"torch", "lightning", "transformers", "wandb", "bertft"}
    saved = Path(run_dir) / "files" / "lightning_config.yaml"
    assert yaml.safe_load(saved.read_text())["model"]["head"]["class_path"] == "bertft.heads.WeightedLayersHead"
    assert summary["state"] == "finished"


def test_wandb_run_metrics(wandb_run) -> None:
    _, summary, records, _ = wandb_run
    rows = history(records)
    loss_steps = [r["trainer/global_step"] for r in rows if "train/loss" in r]
    assert len(loss_steps) == MAX_STEPS // LOG_EVERY  # one value per logged step
    assert len(set(loss_steps)) == len(loss_steps)
    # Learning rate per parameter group, gradient norm, throughput and layer weights on the same logged steps.
    for key in ("lr/encoder", "lr/head", "lr/mix.no_decay", "train/grad_norm", "train/tokens_per_sec"):
        assert len([r for r in rows if key in r]) == MAX_STEPS // LOG_EVERY, key
    weights = [[r[f"layers/weight_{i}"] for i in range(3)] for r in rows if "layers/weight_0" in r]  # embeddings + 2
    assert len(weights) == MAX_STEPS // LOG_EVERY
    assert all(sum(w) == pytest.approx(1.0, abs=1e-5) for w in weights)
    assert [r["val/acc"] for r in rows if "val/acc" in r], "validated twice"
    metrics = summary["summary"]
    assert 0.0 <= metrics["val/acc"]["max"] <= 1.0  # the best value, kept beside the last one
    assert "last" in metrics["val/acc"]
    assert "test/acc" in metrics
    for chart in ("val/confusion_matrix_table", "val/misclassified", "layers/weights_table"):
        assert chart in metrics, sorted(metrics)


def test_no_secret_in_any_file(wandb_run) -> None:
    tmp_path, *_ = wandb_run
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    assert any(p.suffix == ".ckpt" for p in files)
    for path in files:
        assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_tensorboard_scalars_match_the_csv_logger(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Both shipped logger configs at once (a list of loggers), so the two see the same run.
    both = [
        yaml.safe_load((LOGGERS / f"{name}.yaml").read_text())["trainer"]["logger"] for name in ("tensorboard", "csv")
    ]
    layered = tmp_path / "both.yaml"
    layered.write_text(yaml.safe_dump({"trainer": {"logger": both}}))
    fit(tmp_path, tiny_bert_dir, layered)

    with open(next((tmp_path / "run" / "csv").rglob("metrics.csv")), encoding="utf-8") as f:
        import csv

        csv_values = {
            (key, int(row["step"])): float(value)
            for row in csv.DictReader(f)
            for key, value in row.items()
            if value and key not in ("step", "epoch")
        }
    tb_values = {}
    for events in (tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tb_values.update({(tag, e.step): e.value for e in acc.Scalars(tag)})
    tb_values = {k: v for k, v in tb_values.items() if k[0] != "epoch"}

    assert tb_values.keys() == csv_values.keys()
    for key, value in csv_values.items():
        assert tb_values[key] == pytest.approx(value, rel=1e-6), key
    names = {k for k, _ in csv_values}
    for name in ("train/loss", "val/acc", "test/acc", "lr/encoder", "train/grad_norm", "layers/weight_0"):
        assert name in names
    csv_dir = next((tmp_path / "run" / "csv").glob("version_*"))
    assert (csv_dir / "val_confusion_matrix.csv").is_file()
    hparams = yaml.safe_load((csv_dir / "hparams.yaml").read_text())
    assert hparams["model"]["head"]["class_path"] == "bertft.heads.WeightedLayersHead"
    assert "run_info" in hparams


# --- W&B mode without a fit --------------------------------------------------------------------------------------


@pytest.fixture
def no_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.mark.usefixtures("no_login")
def test_wandb_is_offline_without_a_login() -> None:
    assert not wandb_login_found()
    logger = WandbLogger(project="p")
    assert logger.offline_reason == "no W&B login found"
    assert logger._wandb_init["mode"] == "offline"


@pytest.mark.usefixtures("no_login")
def test_wandb_goes_online_with_a_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    logger = WandbLogger(project="p", name="run", group="g", tags=["a"])  # no run starts until first use
    assert logger.offline_reason is None
    assert "mode" not in logger._wandb_init
    assert logger._wandb_init["group"] == "g"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment still wins
    assert WandbLogger().offline_reason == "WANDB_MODE=offline"


@pytest.mark.usefixtures("no_login")
def test_log_model_offline() -> None:
    with pytest.raises(ValueError, match="log_model=True uploads checkpoints.*offline"):
        WandbLogger(offline=True, log_model=True)
    with pytest.warns(UserWarning, match="Continuing without uploading"):
        logger = WandbLogger(log_model="all")  # offline only because nobody logged in: keep the run
    assert logger._log_model is False


def test_explicit_offline_log_model_is_a_clean_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(CONFIGS / "debug.yaml"), "--config", str(LOGGERS / "wandb.yaml"),
              "--trainer.logger.init_args.offline=true", "--trainer.logger.init_args.log_model=true"],
             run=False)  # fmt: skip
    assert exit_info.value.code == 2
    assert "log_model" in capsys.readouterr().err


def test_redact() -> None:
    config = {"trainer": {"logger": {"init_args": {"api_key": "k", "project": "p", "settings": {"auth_token": "t"}}}}}
    assert redact(config) == {
        "trainer": {
            "logger": {"init_args": {"api_key": "<redacted>", "project": "p", "settings": {"auth_token": "<redacted>"}}}
        }
    }


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")
def test_run_info_records_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    from bertft.training.loggers import run_info

    monkeypatch.chdir(ROOT)
    assert len(run_info()["git"]["commit"]) == 40
