"""LoRA through peft (``model.peft``): what trains, what checkpoints hold, resuming, merged export, composition and
bad input. Tiny random encoders of every family; the real MiniLM for kill -9 and resume."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import bertft
from bertft.adapters import AUTO_TARGETS, PeftSettings, base_model, merge_adapters
from bertft.cli import main
from bertft.deploy.export import export
from bertft.model import FineTuner
from bertft.training.checks import checkpoint_bytes

from .ddp import launch
from .families import BY_NAME
from .helpers import (
    CONFIGS,
    cli_args,
    fit,
    kill_once_written,
    last_lr,
    make_batches,
    resume_fit_args,
    run_bertft,
    sst2_rows,
    write_tsv,
)

LORA = CONFIGS / "peft" / "lora.yaml"
# One tiny encoder of each model_type the suite covers (tests/families.py).
FAMILIES = ["bert", "electra", "distilbert", "roberta", "xlm-roberta", "albert", "deberta-v2", "mpnet", "modernbert"]


def lora_layers(encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in encoder.named_modules() if isinstance(m, LoraLayer)}


# ----- every family: auto targets, only adapters and head move, merged equals unmerged ------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_trains_only_adapters_and_head_and_merges_exactly(name: str, family_dir) -> None:
    family = BY_NAME[name]
    path = family_dir(name)
    model = FineTuner(
        str(path), lr=1e-2, warmup_ratio=0.0, peft=PeftSettings(r=4, dropout=0.0),
        gradient_checkpointing=family.checkpointing,  # the input-grad pitfall: adapters below must still get grads
    )  # fmt: skip
    config = model.encoder.config
    adapted = lora_layers(model.encoder)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == set(AUTO_TARGETS[config.model_type])
    groups = config.num_hidden_layers if not family.shared_layers else 1  # ALBERT runs one shared layer
    assert len(adapted) == groups * len(AUTO_TARGETS[config.model_type])

    base = {k: v.clone() for k, v in base_model(model.encoder).state_dict().items() if "lora_" not in k}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n or n.startswith("head.")}
    assert any(n.startswith("head.") for n in trainable)

    loader = make_batches(path, sst2_rows("train", 16, label=int))
    batch = next(iter(loader))
    model.train()
    model._loss(model(batch), batch["labels"]).backward()
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B starts at zero, so A's gradient is zero at first; B's is not, in every layer
            assert p.grad is not None, n
            assert p.grad.abs().sum() > 0, n
    model.zero_grad()

    fit(model, loader, steps=3)
    after = base_model(model.encoder).state_dict()
    for k, v in base.items():
        assert torch.equal(v, after[k]), f"base weight {k} moved"
    assert all(not torch.equal(v, model.head.state_dict()[k]) for k, v in head.items() if v.dim() == 2)
    assert all(m.lora_B["default"].weight.abs().sum() > 0 for m in adapted.values())

    model.eval()
    with torch.no_grad():
        unmerged = model(batch)
        with model.encoder.disable_adapter():
            without = model(batch)
        model.encoder = merge_adapters(model.encoder)
        merged = model(batch)
    assert not lora_layers(model.encoder)
    assert (unmerged - without).abs().max() > 1e-3  # the adapters matter: the comparison below has teeth
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


def test_all_linear_and_named_targets_and_layers(tiny_bert_dir: Path) -> None:
    every = FineTuner(str(tiny_bert_dir), peft=PeftSettings(target_modules="all-linear"))
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(every.encoder)} == {"query", "key", "value", "dense"}
    top = FineTuner(str(tiny_bert_dir), peft=PeftSettings(target_modules=["value"], layers=[1]))
    assert list(lora_layers(top.encoder)) == ["base_model.model.encoder.layer.1.attention.self.value"]


def test_dora_rslora_and_trained_biases_merge_exactly(tiny_bert_dir: Path) -> None:
    settings = PeftSettings(use_dora=True, use_rslora=True, bias="lora_only", dropout=0.0)
    model = FineTuner(str(tiny_bert_dir), lr=1e-2, warmup_ratio=0.0, peft=settings)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA's magnitudes
    assert any(n.endswith("query.base_layer.bias") for n in trainable)  # the adapted layers' biases
    assert not any(n.endswith("output.dense.bias") for n in trainable)
    loader = make_batches(tiny_bert_dir, sst2_rows("train", 16, label=int))
    fit(model, loader, steps=3)
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        unmerged = model(batch)
        model.encoder = merge_adapters(model.encoder)
        torch.testing.assert_close(model(batch), unmerged, rtol=0, atol=1e-5)


def test_layer_wise_lr_decay_gives_each_layers_adapters_its_rate(tiny_bert_dir: Path) -> None:
    model = FineTuner(str(tiny_bert_dir), lr=1e-3, layer_lr_decay=0.5, peft=PeftSettings())
    rate = {id(p): g["lr"] for g in model.parameter_groups() for p in g["params"]}
    for name, p in model.named_parameters():
        if "lora_" in name:
            layer = int(name.split("encoder.layer.")[1].split(".")[0]) + 1  # 2 layers: depth 1 and 2 of top 3
            assert rate[id(p)] == pytest.approx(1e-3 * 0.5 ** (3 - layer)), name
    assert {id(p) for p in model.parameters() if p.requires_grad} == set(rate)  # nothing frozen in the optimiser


# ----- the command line: checkpoints, validate / predict from them, export -----------------------------------------


@pytest.fixture(scope="module")
def sst2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("peft_data")
    return {
        "train": write_tsv(tmp / "train.tsv", sst2_rows("train", 64)),
        "val": write_tsv(tmp / "val.tsv", sst2_rows("test", 16)),
    }


@pytest.fixture(scope="module")
def lora_fit(sst2: dict[str, str], tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A LoRA fit of the tiny BERT through the CLI, the CSV logger on; (cli, run folder)."""
    out = tmp_path_factory.mktemp("peft_fit")
    cli = main(cli_args(out, "--trainer.val_check_interval=4", configs=[LORA], encoder=tiny_bert_dir,
                        train=sst2["train"], val=sst2["val"], quoting=False, batch_size=8, max_steps=8,
                        logger="bertft.training.loggers.CSVLogger"))  # fmt: skip
    return cli, Path(cli.trainer.log_dir)


def test_checkpoint_holds_only_what_trains_and_names_the_base(lora_fit, tiny_bert_dir: Path) -> None:
    cli, run = lora_fit
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    trainable = {n for n, p in cli.model.named_parameters() if p.requires_grad}
    assert set(saved["state_dict"]) == trainable
    assert saved["hyper_parameters"]["encoder"] == str(tiny_bert_dir)
    assert saved["hyper_parameters"]["peft"]["r"] == 8
    assert saved["bertft_adapters"]["base_encoder"] == str(tiny_bert_dir)
    base_bytes = (tiny_bert_dir / "model.safetensors").stat().st_size
    assert last.stat().st_size < 0.05 * base_bytes  # adapters, head and their AdamW moments: tens of KB
    assert checkpoint_bytes(cli.model) < 2 * last.stat().st_size  # the disk check before fit counts what is saved
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["params/trainable"] == sum(p.numel() for p in cli.model.parameters() if p.requires_grad)
    assert 0 < hparams["params/share"] < 0.01

    # Loading rebuilds the base from model.encoder and puts the saved weights on it.
    from transformers import AutoModel

    loaded = FineTuner.load_from_checkpoint(last, map_location="cpu", weights_only=True).state_dict()
    prefix = "encoder.base_model.model."
    base = AutoModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).state_dict()
    for key, value in loaded.items():
        if key in saved["state_dict"]:
            assert torch.equal(value, saved["state_dict"][key]), key
        else:
            assert torch.equal(value, base[key.removeprefix(prefix).replace(".base_layer", "")]), key


def test_validate_and_predict_from_a_lora_checkpoint(lora_fit, sst2: dict[str, str], tmp_path: Path) -> None:
    _, run = lora_fit
    last = run / "checkpoints" / "last.ckpt"
    cli = main(cli_args(tmp_path / "v", f"--ckpt_path={last}", command="validate", val=sst2["val"], quoting=False,
                        logger=False))  # fmt: skip
    assert "val/acc" in cli.trainer.callback_metrics
    assert lora_layers(cli.model.encoder)
    out = tmp_path / "predictions.csv"
    main(cli_args(tmp_path / "p", f"--ckpt_path={last}", f"--prediction.output_file={out}", command="predict",
                  predict=sst2["val"], quoting=False, logger=False))  # fmt: skip
    assert len(out.read_text().splitlines()) == 17


def test_export_merges_adapters_and_writes_peft_format(lora_fit, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    _, run = lora_fit
    folder = export(run / "checkpoints" / "last.ckpt", tmp_path / "exported", onnx=True, adapter=True)
    assert not any("lora" in k for k in load_file(folder / "model.safetensors"))
    texts = [s for s, _ in sst2_rows("test", 8)]
    model = FineTuner.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True).eval()
    reference = bertft.Predictor.from_checkpoint(run / "checkpoints" / "last.ckpt").logits(texts)
    torch.testing.assert_close(bertft.load(folder).logits(texts), reference, rtol=0, atol=1e-5)

    import numpy as np
    import onnxruntime as ort

    enc = bertft.load(folder).tokenizer(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"))
    feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    torch.testing.assert_close(torch.from_numpy(session.run(None, feed)[0]), reference, rtol=0, atol=1e-4)

    # peft's own format: a peft user loads the adapter on the base and gets the trained encoder.
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert_dir), folder / "adapter").eval()
    batch = next(iter(make_batches(tiny_bert_dir, sst2_rows("test", 8, label=int))))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        theirs = peft_model(**inputs).last_hidden_state
        ours = model.encoder(**inputs).last_hidden_state
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)


# ----- bad input: one line, exit 2, nothing written ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model.peft.target_modules=[querry, value]"], "did you mean 'query'"),
        (["--model.peft.target_modules=[Wqkv]"], "linear layers are dense, key, query, value"),
        (["--model.peft.r=0"], "model.peft.r=0 must be a whole number of 1 or more"),
        (["--model.peft.method=prefix_tuning"], "model.peft.method='prefix_tuning': bertft wires lora"),
        (["--model.peft.layers=[2]"], "give layer numbers from 0 to 1"),
        (["--freezing.train_top_layers=1"], "list them in model.peft.layers instead"),
        (["--model.freeze_encoder=true"], "LoRA already freezes the encoder"),
        ([], "pip install 'bertft[peft]'"),  # peft not installed
    ],
    ids=["unknown-target", "other-family-target", "r0", "method", "layers", "freezing", "freeze_encoder", "no-peft"],
)
def test_bad_input_one_line_exit_2_nothing_written(
    extra: list[str], message: str, tiny_bert_dir: Path, sst2: dict[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if not extra:
        monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails as when it is not installed
    out = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(out, *extra, configs=[LORA], encoder=tiny_bert_dir, train=sst2["train"], quoting=False,
                      max_steps=1, cache_dir=tmp_path / "cache"))  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("bertft: error:")]
    assert message in line, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_sweep_searches_peft_settings() -> None:
    from bertft.training.lightning_cli import known_keys, parse_config

    parser, config = parse_config(["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(LORA),
                                   "--model.peft.r=4", "--model.peft.target_modules=all-linear"])  # fmt: skip
    # A sweep's keys are checked against the parser's options and the base configs' keys (bertft.sweep.validate).
    assert {"model.peft.r", "model.peft.alpha", "model.peft.target_modules"} <= known_keys(parser) | set(config.keys())
    assert (config.model.peft.r, config.model.peft.target_modules) == (4, "all-linear")


# ----- in processes of their own: kill -9 and resume, DDP ----------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_epoch_then_ckpt_path_last_matches_an_uninterrupted_lora_run(tmp_path: Path) -> None:
    """tests/test_resume.py's kill -9 test, with LoRA on the real MiniLM (adapter dropout and encoder dropout on)."""
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 15))
    val = write_tsv(tmp_path / "val.tsv", sst2_rows("test", 10))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    lora = f"--config={LORA}"
    run_bertft(*resume_fit_args(whole, train, val, lora), timeout=600)
    last = broken / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    run_bertft(*resume_fit_args(broken, train, val, lora), timeout=600, returncode=-signal.SIGKILL,
               while_running=kill_once_written(last))  # fmt: skip
    interrupted = torch.load(last, map_location="cpu", weights_only=True)
    assert 0 < interrupted["global_step"] < 6
    assert interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] > 0

    resumed = run_bertft(*resume_fit_args(broken, train, val, lora, "--ckpt_path=last"), timeout=600)
    assert f"Resuming from {last}" in resumed.stderr
    a = torch.load(whole / "csv" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all("lora_" in k or k.startswith("head.") for k in a["state_dict"])
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert last_lr(whole / "csv" / "version_0" / "metrics.csv") == last_lr(broken / "csv" / "version_0" / "metrics.csv")


@pytest.mark.slow
def test_ddp_through_the_cli_with_the_default_logger(sst2: dict[str, str], tiny_bert_dir: Path, tmp_path: Path) -> None:
    """The README's DDP command with the LoRA layer, on 2 CPU processes, the quickstart's CSV logger on."""
    configs = [CONFIGS / "quickstart.yaml", CONFIGS / "trainer" / "ddp.yaml", LORA]
    run = launch(
        cli_args(tmp_path, "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.val_check_interval=2",
                 configs=configs, encoder=tiny_bert_dir, train=sst2["train"], val=sst2["val"], test=sst2["val"],
                 batch_size=8, max_steps=4),
        timeout=300,
    )  # fmt: skip
    # the trainable share, printed; configs/peft/lora.yaml adapts every linear layer, each kind named once
    assert "peft: lora r=8 on dense, key, query, value: " in run.stderr + run.stdout
    (version,) = (tmp_path / "csv").iterdir()
    saved = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] > 0
    assert "test/acc" in run.stdout  # fit went on to test its best checkpoint, rebuilt from the adapters
    assert all("lora_" in k or k.startswith("head.") for k in saved["state_dict"])
    assert "params/trainable" in yaml.safe_load((version / "hparams.yaml").read_text())
