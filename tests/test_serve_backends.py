"""What ``bertft serve`` runs, in this process: the worker's answer for each task, and the ONNX backends against
PyTorch on the packaged MiniLM with real SST-2 rows; plus a short load on the real model served with int8 ONNX."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from bertft import load
from bertft.deploy.export import export
from bertft.deploy.serve_worker import BertftAPI

from .helpers import MINILM, sst2_rows
from .helpers.serving import export_untrained, serving

pytest.importorskip("onnxruntime", reason="the ONNX backends need onnxruntime (pip install 'bertft[onnx]')")

LABELS = ["negative", "positive"]
#: fp32 ONNX Runtime against PyTorch: the same graph, other kernels; probabilities agree to float rounding.
ONNX_PROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with a head trained a little on real SST-2 rows, exported with both ONNX graphs."""
    import lightning as L

    from bertft import FineTuner, MeanHead
    from bertft.deploy.export import export

    from .helpers import fit, make_batches

    L.seed_everything(0)
    model = FineTuner("minilm", head=MeanHead(), label_names=LABELS, lr=1e-4)
    trainer = fit(model, make_batches(MINILM, sst2_rows("train", 128, label=int), batch_size=16), steps=8)
    root = tmp_path_factory.mktemp("serve-minilm")
    trainer.save_checkpoint(root / "minilm.ckpt")
    return export(root / "minilm.ckpt", root / "minilm", onnx=True, quantize="int8")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [text for text, _ in sst2_rows("test", 200)]


def test_onnx_agrees_with_torch(minilm_folder: Path, texts: list[str]) -> None:
    torch_probs = torch.softmax(load(minilm_folder).logits(texts), dim=-1)
    onnx_probs = torch.softmax(load(minilm_folder, backend="onnx").logits(texts), dim=-1)
    assert torch.equal(onnx_probs.argmax(-1), torch_probs.argmax(-1))
    torch.testing.assert_close(onnx_probs, torch_probs, rtol=0, atol=ONNX_PROB_TOLERANCE)


def test_int8_agrees_with_fp32_on_99_percent_of_labels(minilm_folder: Path, texts: list[str]) -> None:
    fp32 = load(minilm_folder, backend="onnx").logits(texts).argmax(-1)
    int8 = load(minilm_folder, backend="onnx-int8").logits(texts).argmax(-1)
    agreement = (fp32 == int8).float().mean().item()
    sys.stderr.write(f"int8 agrees with fp32 on {agreement:.1%} of {len(texts)} SST-2 test labels\n")
    assert agreement >= 0.99


def test_a_missing_graph_is_named(tiny_bert_dir: Path, tmp_path: Path) -> None:
    folder = export_untrained(tiny_bert_dir, tmp_path / "plain", "classification", LABELS)
    with pytest.raises(FileNotFoundError, match="--onnx"):
        load(folder, backend="onnx")
    with pytest.raises(ValueError, match="backend"):
        load(folder, backend="tensorrt")
    with pytest.raises(ValueError, match="--onnx"):
        export(tmp_path / "plain.ckpt", tmp_path / "int8-only", quantize="int8")  # int8 quantizes the ONNX graph


def test_each_task_answers_in_its_shape(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """The worker's answers per task, in this process (each would otherwise need a server of its own)."""
    shapes = {"multilabel": ["a", "b", "c"], "regression": [], "token": ["O", "B-PER", "I-PER"]}
    for task, labels in shapes.items():
        folder = export_untrained(tiny_bert_dir, tmp_path / task, task, labels)
        api = BertftAPI(str(folder), "torch", 1, 64, 8, 0.0, 4096)
        api.setup("cpu")
        signal.signal(signal.SIGINT, signal.default_int_handler)  # setup() ignores Ctrl-C, as a worker should
        if task == "token":
            text = "John  Smith lives in Paris"
            (out,) = api.predict([{"texts": [text], "raw": False}])
            for entity in out["items"][0]:
                assert text[entity["start"] : entity["end"]] == entity["text"]
                assert entity["label"] == "PER"
            continue
        ids = api.predictor.tokenizer(["a fine film", "a dull plot"])["input_ids"]
        (out,) = api.predict([{"ids": ids, "types": None, "raw": False}])
        logits = load(folder).logits(["a fine film", "a dull plot"])
        if task == "regression":
            assert [a[0]["score"] for a in out["items"]] == pytest.approx(logits.squeeze(-1).tolist(), abs=1e-5)
        else:
            first = {s["label"]: s for s in out["items"][0]}
            for name, p in zip(labels, torch.sigmoid(logits[0]).tolist(), strict=True):
                assert first[name]["score"] == pytest.approx(p, abs=1e-5)
                assert first[name]["predicted"] == (p > 0.5)


@pytest.mark.slow
def test_minilm_on_int8_onnx_serves_a_short_load_without_an_error(minilm_folder: Path, texts: list[str]) -> None:
    rows = (texts * 2)[:300]
    expected = [p["label"] for p in load(minilm_folder, backend="onnx-int8").predict(rows[:20])]
    with serving(minilm_folder, "--backend", "onnx-int8") as server:

        async def run() -> list[httpx.Response]:
            slots = asyncio.Semaphore(16)  # 16 clients at a time
            async with httpx.AsyncClient(timeout=60) as client:

                async def one(text: str) -> httpx.Response:
                    async with slots:
                        return await client.post(f"{server.url}/predict", json={"inputs": text})

                return await asyncio.gather(*(one(t) for t in rows))

        started = time.monotonic()
        responses = asyncio.run(asyncio.wait_for(run(), timeout=180))
        sys.stderr.write(f"{len(rows)} requests in {time.monotonic() - started:.1f} s\n")
    assert [r.status_code for r in responses] == [200] * len(rows)
    assert [r.json()[0]["label"] for r in responses[:20]] == expected
