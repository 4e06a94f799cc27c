"""The real pre-trained all-MiniLM-L6-v2 (packaged, offline) on real SST-2 rows."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModel

from bertft import FineTuner
from bertft.heads import ConcatCLSHead, MeanHead, PoolerHead, WeightedLayersHead

from .helpers import MINILM, fit, make_batches, sst2_rows


def mean_loss(model: FineTuner, loader) -> float:
    model.eval()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(b), b["labels"]) for b in loader]
    model.train()
    return torch.stack(losses).mean().item()


@pytest.mark.slow
def test_thirty_steps_lower_the_training_loss() -> None:
    L.seed_everything(0)
    loader = make_batches(MINILM, sst2_rows("train", 480, label=int), batch_size=16)  # 30 batches of real rows
    model = FineTuner("minilm", lr=1e-4, warmup_ratio=0.1)
    before = mean_loss(model, loader)
    trainer = fit(model, loader, steps=30)
    assert trainer.global_step == 30
    after = mean_loss(model, loader)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("head", [MeanHead(), PoolerHead(), WeightedLayersHead(), ConcatCLSHead(last_k=2)])
def test_logits_equal_a_hand_written_forward(head) -> None:
    model = FineTuner("minilm", head=head).eval()
    batch = next(iter(make_batches(MINILM, sst2_rows("test", 6, label=int))))
    reference = AutoModel.from_pretrained(MINILM).eval()  # plain transformers, with its pooler
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        out = reference(**inputs, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        if isinstance(head, MeanHead):
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        elif isinstance(head, PoolerHead):
            pooled = out.pooler_output
        elif isinstance(head, WeightedLayersHead):
            mixed = torch.stack(out.hidden_states).mean(0)  # uniform weights at start, gamma = 1
            pooled = (mixed * mask).sum(1) / mask.sum(1)
        else:
            pooled = torch.cat([out.hidden_states[-2][:, 0], out.hidden_states[-1][:, 0]], dim=-1)
        linear = model.head.classifier.net[-1]
        expected = pooled @ linear.weight.T + linear.bias
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_reproduces_logits(tmp_path: Path) -> None:
    loader = make_batches(MINILM, sst2_rows("train", 32, label=int), batch_size=16)
    model = FineTuner("minilm", head=WeightedLayersHead(last_k=3, include_embeddings=False), label_names=["neg", "pos"])
    trainer = fit(model, loader, steps=2)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = FineTuner.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    batch = next(iter(loader))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    assert loaded.label_names == ["neg", "pos"]
    assert isinstance(loaded.head, WeightedLayersHead)
    assert loaded.head.layers == [4, 5, 6]
    assert loaded.head.layer_weights == model.head.layer_weights


def test_freeze_encoder_leaves_every_encoder_weight_bit_identical() -> None:
    loader = make_batches(MINILM, sst2_rows("train", 64, label=int), batch_size=16)
    model = FineTuner("minilm", freeze_encoder=True, lr=1e-3)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    fit(model, loader, steps=4)
    after = model.encoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_attentions_are_exposed_for_analysis() -> None:
    model = FineTuner("minilm").eval()
    batch = next(iter(make_batches(MINILM, sst2_rows("test", 3, label=int))))
    with torch.no_grad():
        out = model.encode(batch, attentions=True, hidden_states=True)
    seq = batch["input_ids"].shape[1]
    assert len(out.attentions) == 6
    assert out.attentions[0].shape == (3, 12, seq, seq)
    assert len(out.hidden_states) == 7  # embeddings + 6 layers
    rows = out.attentions[0].sum(-1)[batch["attention_mask"].bool().unsqueeze(1).expand(-1, 12, -1)]
    torch.testing.assert_close(rows, torch.ones_like(rows))  # probabilities over keys
