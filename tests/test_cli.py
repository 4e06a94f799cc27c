"""The command line end to end: every shipped config, fit -> test -> predict on real SST-2 (errors: test_bad_input)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import bertft
from bertft import FineTuner
from bertft.cli import main
from bertft.heads import (
    AttentionMapHead,
    AttentionPoolingHead,
    ConcatCLSHead,
    FirstLastMeanHead,
    Head,
    MeanHead,
    MeanMaxHead,
    WeightedLayersHead,
)
from bertft.training.checks import checkpoint_bytes

from .helpers import CONFIGS as CONFIG_DIR
from .helpers import cli_args, run_bertft, sst2_rows, write_tsv

CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not {"heads", "trainer", "sweeps"} & set(p.parts))
HEAD_CONFIGS = sorted((CONFIG_DIR / "heads").glob("*.yaml"))
QUICKSTART = CONFIG_DIR / "quickstart.yaml"
# What each logger a config may choose writes its metrics to (Lightning's default, TensorBoard, without one).
METRICS_FILES = ("metrics.csv", "events.out.tfevents.*", "run-*.wandb")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_runs_as_written(config: Path, tmp_path: Path, tiny_bert_dir: Path) -> None:
    """What users run: the config as written, its logger and checkpoints on. Only shortened: the tiny encoder, 2 steps
    with a validation at the second, 2 batches to validate and test; for SST-2 (and the configs without data), 160
    real rows instead of 60,614."""
    files: list[str] = []
    text = config.read_text()
    if "bundled://sst2/" in text or "train_file" not in text:  # STS-B and CoNLL configs: their own bundled files
        train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 160))
        val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 20))
        files = [f"--data.train_file={train}", f"--data.val_file={val}", f"--data.test_file={val}"]
    out = tmp_path / "run"
    cli = main([
        "fit", f"--config={config}", f"--model.encoder={tiny_bert_dir}", *files, "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
        f"--trainer.default_root_dir={out}",
    ])  # fmt: skip
    assert cli.trainer.global_step == 2
    (last,) = out.rglob("last.ckpt")
    assert list(last.parent.glob("best-*.ckpt")), "the best checkpoint by the validation metric, beside last.ckpt"
    assert (Path(cli.trainer.log_dir) / "config.yaml").is_file(), "the resolved config, in the run's folder"
    written = [p.name for pattern in METRICS_FILES for p in out.rglob(pattern)]
    assert written, f"no metrics from the logger under {out}: {sorted(p.name for p in out.rglob('*'))}"
    assert any(key.startswith("test/") for key in cli.trainer.callback_metrics)  # fit tested the best checkpoint


def test_a_linear_probe_checkpoint_holds_the_head_and_loads_onto_the_base(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """``configs/sst2_linear_probe.yaml``'s encoder never trains, so its checkpoints leave it out (271 MB on MiniLM)
    and name the base; loading rebuilds the encoder from it, and validate, predict and resuming work as before."""
    out = tmp_path / "run"
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 64))
    val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 16))
    probe = CONFIG_DIR / "sst2_linear_probe.yaml"
    cli = main(cli_args(out, "--trainer.val_check_interval=2", configs=[probe], encoder=tiny_bert_dir, train=train,
                        val=val, test=val, max_steps=2, batch_size=16))  # fmt: skip
    (last,) = out.rglob("last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert set(saved["state_dict"]) == {n for n, p in cli.model.named_parameters() if p.requires_grad}
    assert all(key.startswith("head.") for key in saved["state_dict"])
    assert saved["bertft_adapters"]["base_encoder"] == str(tiny_bert_dir)
    assert last.stat().st_size < 0.1 * (tiny_bert_dir / "model.safetensors").stat().st_size
    assert checkpoint_bytes(cli.model) < 2 * last.stat().st_size  # the disk check before fit counts what is saved

    loaded = FineTuner.load_from_checkpoint(last, map_location="cpu", weights_only=True).state_dict()
    trained = cli.model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)  # the encoder from the base, the head saved

    validated = main(cli_args(tmp_path / "v", f"--ckpt_path={last}", command="validate", val=val, quoting=False,
                              logger=False))  # fmt: skip
    assert "val/acc" in validated.trainer.callback_metrics
    predictions = tmp_path / "predictions.csv"
    main(cli_args(tmp_path / "p", f"--ckpt_path={last}", f"--prediction.output_file={predictions}",
                  command="predict", predict=val, quoting=False, logger=False))  # fmt: skip
    assert len(predictions.read_text().splitlines()) == 17
    assert bertft.load(last).predict(["a gripping, funny film"])[0]["label"] in {"0", "1"}  # export and serve load so
    resumed = main(cli_args(out, "--trainer.val_check_interval=2", "--ckpt_path=last", configs=[probe],
                            encoder=tiny_bert_dir, train=train, val=val, test=val, max_steps=4,
                            batch_size=16))  # fmt: skip
    assert resumed.trainer.global_step == 4


def test_the_fast_recipe_layers_on_a_config() -> None:
    fast = CONFIG_DIR / "speed" / "fast.yaml"
    cli = main(["--config", str(QUICKSTART), "--config", str(fast)], run=False)
    encoder = cli.model.encoder
    assert {m.p for m in encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    assert not any(p.requires_grad for p in encoder.embeddings.parameters())
    assert all(p.requires_grad for p in encoder.encoder.parameters())
    assert cli.model.head.dropout == 0.1  # the head keeps its own dropout
    assert cli.datamodule.hparams["train_file"] == "bundled://sst2/train.tsv"  # the rest of the quickstart stands


@pytest.mark.parametrize("config", HEAD_CONFIGS, ids=lambda p: p.stem)
def test_every_head_config_parses(config: Path) -> None:
    cli = main(["--config", str(QUICKSTART), "--config", str(config)], run=False)
    head = cli.model.head
    assert isinstance(head, Head)
    expected = {
        "weighted": WeightedLayersHead, "concat_cls": ConcatCLSHead, "mean": MeanHead, "mean_max": MeanMaxHead,
        "first_last": FirstLastMeanHead, "attention_pooling": AttentionPoolingHead, "attention_map": AttentionMapHead,
    }.get(config.stem)  # fmt: skip
    if expected is not None:
        assert isinstance(head, expected)
    assert cli.model.hparams["num_labels"] == 2
    assert cli.model.hparams["label_names"] == ["0", "1"]


@pytest.mark.parametrize("config", HEAD_CONFIGS, ids=lambda p: p.stem)
def test_every_head_config_fits_through_the_command_line(config: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    """``fit --config quickstart --config heads/X`` as the config's header says, for a few steps on the tiny encoder."""
    out = tmp_path / "run"
    fit_tiny = ["--model.head.init_args.last_k=2"] if config.stem == "concat_cls" else []  # the tiny encoder: 2 layers
    cli = main(cli_args(out, *fit_tiny, "--trainer.limit_test_batches=2", configs=[QUICKSTART, config],
                        encoder=tiny_bert_dir, max_steps=3,
                        train=write_tsv(tmp_path / "train.tsv", sst2_rows("train", 96)),
                        val=write_tsv(tmp_path / "val.tsv", sst2_rows("test", 16))))  # fmt: skip
    assert cli.trainer.global_step == 3
    assert cli.model.head.config["class_path"].rsplit(".", 1)[-1] == type(cli.model.head).__name__
    assert any(out.rglob("last.ckpt"))
    assert (cli.model.encoder.config._attn_implementation == "eager") == cli.model.head.needs_attentions


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: bertft.heads.MeanHead" in out
    assert "encoder: minilm" in out
    assert "max_length: 128" in out


def test_help_documents_options_from_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "Layer-wise learning-rate decay" in out
    assert "--data.help" in out  # the data module is chosen by class_path; its options have their own help
    for data_class in ("TextDataModule", "bertft.data.TokenDataModule"):
        with pytest.raises(SystemExit):
            main(["fit", "--data.help", data_class])
        assert "--data.max_length" in capsys.readouterr().out


@pytest.mark.slow
def test_fit_test_predict_end_to_end_on_real_data(tmp_path: Path) -> None:
    """Fit the real MiniLM a few dozen steps through the real entry point, then test and predict from the checkpoint."""
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 320))
    val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 64))
    data = dict(train=train, val=val, test=val, quoting=False, batch_size=16, cache_dir=tmp_path / "cache")
    out = tmp_path / "run"
    # The progress bar as shipped: stdout is a pipe here, as in a CI log, so progress comes as lines.
    fit = run_bertft(
        *cli_args(out, "--trainer.max_steps=20", "--progress.every_n_steps=10", "--progress.every_n_seconds=0",
                  configs=[QUICKSTART], progress_bar=True, **data),
        env={"PYTHONUNBUFFERED": "1"}, timeout=600,
    )  # fmt: skip
    ckpts = sorted(out.rglob("*.ckpt"))
    names = {p.name for p in ckpts}
    assert "last.ckpt" in names
    assert any(n.startswith("best-") for n in names)
    configs = list(out.rglob("config.yaml"))
    assert configs, "the resolved config is saved beside the checkpoints"
    assert "test/acc" in fit.stdout  # fit reports the test metrics of the best checkpoint
    assert "step 10/20 | epoch 0 | loss " in fit.stdout
    assert "step 20/20 | epoch 0 | loss " in fit.stdout
    console = fit.stdout + fit.stderr
    assert "train (" in console  # bertft's own lines stay
    # Other libraries' noise does not: Lightning's tips, a foreign deprecation warning, an empty FLOPs column,
    # transformers' loading bars, and the warning that "best" is ambiguous with two checkpoint callbacks.
    for noise in ("Tip:", "LeafSpec", "FLOPs", "Loading weights", "multiple `ModelCheckpoint`"):
        assert noise not in console, noise

    best = next(p for p in ckpts if p.name.startswith("best-"))
    model = FineTuner.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    assert model.label_names == ["0", "1"]

    texts = [s for s, _ in sst2_rows("test", 37)]
    predict_in = write_tsv(tmp_path / "predict.tsv", [(t,) for t in texts], header=("sentence",))  # no labels
    out_file = tmp_path / "preds.csv"
    run_bertft(
        *cli_args(out, f"--ckpt_path={best}", f"--prediction.output_file={out_file}", command="predict",
                  configs=[configs[0]], predict=predict_in, **data),
        env={"PYTHONUNBUFFERED": "1"}, timeout=600,
    )  # fmt: skip
    with open(out_file, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["sentence"] for r in rows] == texts  # one row per input, in input order
    for r in rows:
        p0, p1 = float(r["prob_0"]), float(r["prob_1"])
        assert 0 <= p0 <= 1
        assert abs(p0 + p1 - 1) < 1e-5
        assert r["prediction"] == ("1" if p1 > p0 else "0")


def test_checkpoint_keeps_what_load_needs(tmp_path: Path, tiny_bert_dir: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", [(s, "pos" if y == "1" else "neg") for s, y in sst2_rows("train", 40)])
    main(cli_args(tmp_path, "--model.head=bertft.heads.WeightedLayersHead", encoder=tiny_bert_dir, train=train,
                  quoting=False, max_steps=2, logger=False))  # fmt: skip
    ckpt = next(tmp_path.rglob("last.ckpt"))
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["label_names"] == ["neg", "pos"]
    assert hparams["head"]["class_path"].endswith(".WeightedLayersHead")
    model = FineTuner.load_from_checkpoint(ckpt, weights_only=True)
    assert model.label_names == ["neg", "pos"]
    assert isinstance(model.head, WeightedLayersHead)
    assert json.loads(json.dumps(hparams["head"])) == hparams["head"]  # plain data, no pickled objects
