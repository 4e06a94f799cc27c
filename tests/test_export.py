"""Export to a self-contained folder and load it back: real MiniLM fine-tuned on real SST-2 rows."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import LightningDataModule
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bertft import FineTuner
from bertft.deploy.export import ONNX_FILE, export, main
from bertft.deploy.inference import HEAD_WEIGHTS, MANIFEST, EncoderWithHead, Predictor, load
from bertft.encoder import load_encoder
from bertft.heads import (
    AttentionMapHead,
    AttentionPoolingHead,
    FirstLastMeanHead,
    MeanHead,
    MeanMaxHead,
    PoolerHead,
    WeightedLayersHead,
)

from .helpers import MINILM, fit, make_batches, sst2_rows

LABELS = ["negative", "positive"]
HAS_ONNX = importlib.util.find_spec("onnx") is not None  # the exporter needs it; onnxruntime checks the result
MAX_LENGTH = 64  # make_batches' truncation, recorded in the checkpoint as the CLI's data module would


def train_checkpoint(path: Path, head, steps: int, rows: int) -> Path:
    L.seed_everything(0)
    loader = make_batches(MINILM, sst2_rows("train", rows, label=int), batch_size=16)
    model = FineTuner("minilm", head=head, label_names=LABELS, lr=1e-4)
    trainer = fit(model, loader, steps=steps)
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt[LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY] = {"tokenizer": "minilm", "max_length": MAX_LENGTH}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PoolerHead: the head that BertForSequenceClassification also expresses."""
    return train_checkpoint(tmp_path_factory.mktemp("ckpt") / "pooler.ckpt", PoolerHead(), steps=5, rows=80)


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(checkpoint, tmp_path_factory.mktemp("exports") / "sst2-pooler", onnx=HAS_ONNX)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real test rows, longest first: the order Predictor batches in, so one batch holds them in this order."""
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    rows = [text for text, _ in sst2_rows("test", 24)]
    return sorted(rows, key=lambda t: -len(tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"]))


def checkpoint_logits(ckpt: Path, texts: list[str]) -> torch.Tensor:
    model = FineTuner.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        return model(dict(batch))


def test_folder_holds_no_pickle_and_describes_the_model(exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {MANIFEST, HEAD_WEIGHTS, "model.safetensors", "config.json", "tokenizer.json"} <= names
    assert (ONNX_FILE in names) is HAS_ONNX
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for n in names)
    assert not any(p.name.startswith(".") for p in exported.parent.iterdir())  # no staging folder left behind
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["task"] == "classification"
    assert manifest["label_names"] == LABELS
    assert manifest["max_length"] == MAX_LENGTH
    assert manifest["head"]["class_path"].endswith("PoolerHead")
    assert manifest["hf_sequence_classification"] is True
    assert set(manifest["files"]) == names - {MANIFEST}


@pytest.mark.slow
def test_a_fresh_process_with_the_folder_alone_reproduces_the_checkpoint_exactly(
    checkpoint: Path, exported: Path, texts: list[str], tmp_path: Path
) -> None:
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = textwrap.dedent(
        f"""
        import json, bertft.deploy.inference as inf
        from safetensors.torch import save_file
        texts = json.load(open("texts.json"))
        predictor = inf.load({str(exported)!r})
        save_file({{"logits": predictor.logits(texts, batch_size=len(texts))}}, "logits.safetensors")
        json.dump(predictor.predict(texts[:3], batch_size=2), open("predictions.json", "w"))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    logits = load_file(tmp_path / "logits.safetensors")["logits"]
    assert torch.equal(logits, checkpoint_logits(checkpoint, texts))

    predictions = json.loads((tmp_path / "predictions.json").read_text())
    for row, pred in zip(logits[:3], predictions, strict=True):
        assert pred["label"] == LABELS[int(row.argmax())]
        assert pred["probs"].keys() == set(LABELS)
        assert sum(pred["probs"].values()) == pytest.approx(1.0)


def test_predictor_batches_by_length_and_returns_input_order(exported: Path, texts: list[str]) -> None:
    predictor = load(exported)
    one_batch = predictor.logits(texts, batch_size=len(texts))
    small = predictor.logits(texts[::-1], batch_size=5)  # other paddings: equal up to float rounding
    torch.testing.assert_close(small, one_batch.flip(0), rtol=1e-5, atol=1e-5)
    assert predictor.predict([]) == []
    assert predictor.logits([("a fine cast", "a dull plot")]).shape == (1, 2)  # pairs, with token_type_ids
    with pytest.raises(ValueError, match="mixes"):
        predictor.predict(["a text", ("a", "pair")])


def test_predictor_from_checkpoint_equals_the_export(checkpoint: Path, exported: Path, texts: list[str]) -> None:
    assert torch.equal(Predictor.from_checkpoint(checkpoint).logits(texts), load(exported).logits(texts))


def test_transformers_alone_loads_a_pooler_head_export(checkpoint: Path, exported: Path, texts: list[str]) -> None:
    hf = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    assert type(hf).__name__ == "BertForSequenceClassification"
    assert hf.config.id2label == dict(enumerate(LABELS))
    assert hf.config.problem_type == "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(hf(**batch).logits, checkpoint_logits(checkpoint, texts))


def test_onnx_matches_pytorch(exported: Path, texts: list[str]) -> None:
    if not HAS_ONNX:
        pytest.skip("onnx is not installed (pip install 'bertft[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'bertft[onnx]')")
    session = ort.InferenceSession(str(exported / ONNX_FILE), providers=["CPUExecutionProvider"])
    predictor = load(exported)
    names = {i.name for i in session.get_inputs()}
    for rows in (texts[:1], texts[3:10], texts[-4:]):  # batch and sequence sizes other than the traced ones
        batch = predictor.tokenizer(rows, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
        (logits,) = session.run(["logits"], {k: v for k, v in batch.items() if k in names})
        torch.testing.assert_close(torch.from_numpy(logits), predictor.logits(rows), rtol=0, atol=1e-4)


def test_a_missing_or_altered_file_is_named(exported: Path, tmp_path: Path) -> None:
    def linked_copy(name: str, skip: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in exported.iterdir():
            if f.name != skip:
                (folder / f.name).symlink_to(f)
        return folder

    with pytest.raises(FileNotFoundError, match="head.safetensors is missing"):
        load(linked_copy("missing", skip=HEAD_WEIGHTS))

    altered = linked_copy("altered", skip=HEAD_WEIGHTS)
    weights = load_file(exported / HEAD_WEIGHTS)
    weights = {k: v + 1e-3 for k, v in weights.items()}
    save_file(weights, altered / HEAD_WEIGHTS)
    with pytest.raises(ValueError, match="head.safetensors was altered"):
        load(altered)

    with pytest.raises(FileNotFoundError, match="bertft.json"):
        load(linked_copy("no_manifest", skip=MANIFEST))


@pytest.mark.slow
@pytest.mark.parametrize(
    "head",
    [MeanMaxHead, FirstLastMeanHead, lambda: AttentionPoolingHead(scorer_dim=16),
     lambda: AttentionMapHead(layers=[-2, -1], mix="learned")],
    ids=["mean_max", "first_last", "attention_pooling", "attention_map"],
)  # fmt: skip
def test_every_new_head_round_trips_through_checkpoint_export_and_onnx(head, tmp_path: Path, texts: list[str]) -> None:
    """A checkpoint, the exported folder and its ONNX graph give the same logits; attention maps export eagerly."""
    head = head()
    ckpt = train_checkpoint(tmp_path / "head.ckpt", head, steps=2, rows=32)
    out = export(ckpt, tmp_path / "export", onnx=HAS_ONNX)
    predictor = load(out)
    assert type(predictor.model.head) is type(head)
    assert predictor.model.head.config == head.config
    assert (predictor.model.encoder.config._attn_implementation == "eager") == head.needs_attentions
    torch.testing.assert_close(predictor.logits(texts), checkpoint_logits(ckpt, texts), rtol=0, atol=1e-5)
    if not HAS_ONNX:
        return
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    batch = predictor.tokenizer(texts[3:10], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    (logits,) = session.run(["logits"], {k: v for k, v in batch.items() if k in names})
    torch.testing.assert_close(torch.from_numpy(logits), predictor.logits(texts[3:10]), rtol=0, atol=1e-4)


def test_cli_exports_a_weighted_head_and_refuses_a_non_empty_folder(
    tmp_path: Path, texts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    head = WeightedLayersHead(last_k=2, include_embeddings=False)
    ckpt = train_checkpoint(tmp_path / "weighted.ckpt", head, steps=1, rows=16)
    out = tmp_path / "weighted"
    main(["--ckpt_path", str(ckpt), "--output_dir", str(out)])
    assert "exported to" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["hf_sequence_classification"] is False
    assert ONNX_FILE not in manifest["files"]
    assert torch.equal(load(out).logits(texts), Predictor.from_checkpoint(ckpt).logits(texts))

    for argv, message in [
        (["--ckpt_path", str(ckpt), "--output_dir", str(out)], "not empty"),
        (["--ckpt_path", str(tmp_path / "nope.ckpt"), "--output_dir", str(tmp_path / "x")], "nope.ckpt not found"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    (out / "stale.txt").write_text("from an older export")
    main(["--ckpt_path", str(ckpt), "--output_dir", str(out), "--overwrite"])
    assert not (out / "stale.txt").exists()
    assert load(out).label_names == LABELS


def test_a_failed_export_leaves_nothing_behind(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr("bertft.deploy.export.save_file", crash)  # the head's weights, written after the encoder's
    with pytest.raises(RuntimeError, match="killed"):
        export(checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_predict_formats_each_task(task: str, tiny_bert_dir: Path) -> None:
    names = ["a", "b", "c"] if task == "multilabel" else []
    head = MeanHead()
    encoder = load_encoder(str(tiny_bert_dir)).eval()
    head.build(encoder.config.hidden_size, encoder.config.num_hidden_layers, len(names) or 1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    predictor = Predictor(EncoderWithHead(encoder, head), tokenizer, task, names, threshold=0.5)
    texts = [text for text, _ in sst2_rows("test", 5)]
    logits = predictor.logits(texts)
    predictions = predictor.predict(texts, batch_size=2)
    if task == "regression":
        assert [p["label"] for p in predictions] == pytest.approx(logits.squeeze(-1).tolist())
    else:
        for row, pred in zip(torch.sigmoid(logits), predictions, strict=True):
            assert pred["label"] == [n for n, q in zip(names, row.tolist(), strict=True) if q > 0.5]
            assert list(pred["probs"]) == names
    bf16 = Predictor(EncoderWithHead(encoder, head), tokenizer, task, names, dtype=torch.bfloat16)
    assert bf16.logits(texts).dtype == torch.float32
    torch.testing.assert_close(bf16.logits(texts), logits, rtol=0, atol=0.05)
