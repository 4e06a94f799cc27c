"""The LightningModule on tiny random encoders: outputs asked for, pooler checks, dropout, freezing, optimiser."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from bertft import FineTuner
from bertft.adapters import PeftSettings
from bertft.encoder import EncoderOutput
from bertft.heads import Head, MeanHead, PoolerHead, WeightedLayersHead, masked_mean
from bertft.optim import warmup_then_decay
from bertft.training.checks import checkpoint_bytes

from .helpers import fit, make_batches, quiet_trainer, sst2_rows


def captured_calls(model: FineTuner) -> list[dict]:
    calls: list[dict] = []
    model.encoder.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls


def test_hidden_states_are_asked_for_only_when_the_head_needs_them(tiny_bert_dir: Path) -> None:
    batch = next(iter(make_batches(tiny_bert_dir, sst2_rows("train", 4, label=int))))
    for head, wanted in [(MeanHead(), False), (WeightedLayersHead(), True)]:
        model = FineTuner(str(tiny_bert_dir), head=head)
        calls = captured_calls(model)
        model(batch)
        assert calls[-1]["output_hidden_states"] is wanted
        assert calls[-1]["output_attentions"] is False
        assert "labels" not in calls[-1]


def test_pooler_is_built_only_for_the_pooler_head(tiny_bert_dir: Path) -> None:
    assert FineTuner(str(tiny_bert_dir), head=MeanHead()).encoder.pooler is None
    assert FineTuner(str(tiny_bert_dir), head=PoolerHead()).encoder.pooler is not None


def test_pooler_head_on_an_encoder_without_pooler_fails_clearly(tiny_distilbert_dir: Path) -> None:
    with pytest.raises(ValueError, match="has no pooler") as err:
        FineTuner(str(tiny_distilbert_dir), head=PoolerHead())
    assert "MeanHead" in str(err.value)


def test_pooler_head_with_missing_pooler_weights_fails_clearly(tiny_bert_no_pooler_dir: Path) -> None:
    with pytest.raises(ValueError, match="no pre-trained pooler weights"):
        FineTuner(str(tiny_bert_no_pooler_dir), head=PoolerHead())


def test_distilbert_gets_only_the_inputs_it_accepts(tiny_distilbert_dir: Path) -> None:
    batch = next(iter(make_batches(tiny_distilbert_dir, sst2_rows("train", 4, label=int))))
    assert "token_type_ids" in batch  # the tokenizer makes them; DistilBERT's forward would reject them
    model = FineTuner(str(tiny_distilbert_dir), head=MeanHead())
    assert model(batch).shape == (4, 2)


def test_training_runs_with_dropout_active(tiny_bert_dir: Path) -> None:
    model = FineTuner(str(tiny_bert_dir))
    modes: list[bool] = []
    original = model.training_step

    def spy(batch: dict, batch_idx: int) -> torch.Tensor:
        modes.append(all(m.training for m in model.encoder.modules() if isinstance(m, nn.Dropout)))
        return original(batch, batch_idx)

    model.training_step = spy  # type: ignore[method-assign]
    fit(model, make_batches(tiny_bert_dir, sst2_rows("train", 16, label=int)), steps=2)
    assert modes == [True, True]


def test_frozen_encoder_does_not_move_and_the_head_does(tiny_bert_dir: Path) -> None:
    model = FineTuner(str(tiny_bert_dir), head=WeightedLayersHead(), freeze_encoder=True, lr=1e-2)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    fit(model, make_batches(tiny_bert_dir, sst2_rows("train", 32, label=int)), steps=4)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k
    assert not torch.equal(model.head.state_dict()["mix.layer_logits"], head_before["mix.layer_logits"])


@pytest.mark.parametrize("kind", ["full", "freeze_encoder", "peft"])
def test_the_disk_check_counts_the_weights_a_checkpoint_keeps(kind: str, tiny_bert_dir: Path) -> None:
    """``checkpoint_bytes`` and saving follow one rule (``FineTuner.checkpoint_left_out``), so the space asked for
    before a fit is the space a checkpoint's weights take, for full fine-tuning, a linear probe and LoRA alike."""
    settings = {"freeze_encoder": {"freeze_encoder": True}, "peft": {"peft": PeftSettings(r=4)}}.get(kind, {})
    model = FineTuner(str(tiny_bert_dir), **settings)
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    saved = sum(t.numel() * t.element_size() for t in checkpoint["state_dict"].values())
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert checkpoint_bytes(model) == saved + moments
    assert (len(checkpoint["state_dict"]) < len(model.state_dict())) == (kind != "full")


def test_a_frozen_encoder_gives_fixed_features_and_leaves_no_module_in_eval_mode(tiny_bert_dir: Path) -> None:
    """Frozen: no dropout in its forward pass, yet its modules train as the model does, so Lightning has nothing to
    warn about ("modules in eval mode at the start of training", on every linear probe before)."""
    model = FineTuner(str(tiny_bert_dir), freeze_encoder=True, encoder_dropout=0.5).train()
    features: list[torch.Tensor] = []
    model.encoder.register_forward_hook(lambda module, args, out: features.append(out.last_hidden_state))
    batch = next(iter(make_batches(tiny_bert_dir, sst2_rows("train", 8, label=int))))
    batch.pop("labels")
    model(batch)
    model(batch)
    assert torch.equal(features[0], features[1])  # dropout 0.5 would make them differ in training mode
    assert not features[0].requires_grad
    assert all(module.training for module in model.modules())  # only for the call: the flags follow the model
    unfrozen = FineTuner(str(tiny_bert_dir), encoder_dropout=0.5).train()
    unfrozen.encoder.register_forward_hook(lambda module, args, out: features.append(out.last_hidden_state))
    unfrozen(batch)
    unfrozen(batch)
    assert not torch.equal(features[2], features[3])  # why the test above can fail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, make_batches(tiny_bert_dir, sst2_rows("train", 16, label=int)), steps=2)
    assert not [w for w in caught if "eval mode" in str(w.message)]


def test_frozen_embeddings_do_not_move_and_carry_no_optimiser_state(tiny_bert_dir: Path) -> None:
    model = FineTuner(str(tiny_bert_dir), freeze_embeddings=True, lr=1e-2)
    words = model.encoder.get_input_embeddings().weight
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainer = fit(model, make_batches(tiny_bert_dir, sst2_rows("train", 32, label=int)), steps=4)
    after = model.encoder.state_dict()
    assert torch.equal(words, before["embeddings.word_embeddings.weight"])
    assert words.grad is None
    for key, value in after.items():
        moved = not torch.equal(value, before[key])
        assert moved != key.startswith("embeddings."), f"{key} {'moved' if moved else 'did not train'}"
    optimizer = trainer.optimizers[0]
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in trained and p not in optimizer.state for p in model.encoder.embeddings.parameters())


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_an_impossible_encoder_dropout_is_refused_by_name(tiny_bert_dir: Path, p: float) -> None:
    with pytest.raises(ValueError, match=r"encoder_dropout=.* must be in \[0, 1\)"):
        FineTuner(str(tiny_bert_dir), encoder_dropout=p)


class FirstLastMean(Head):
    """A head written outside the package, as a researcher would: the mean of the first and last layers."""

    needs_hidden_states = True

    def pool(self, outputs: EncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        return masked_mean((outputs.hidden_states[1] + outputs.hidden_states[-1]) / 2, attention_mask)


def test_a_head_defined_outside_the_package_trains(tiny_bert_dir: Path) -> None:
    model = FineTuner(str(tiny_bert_dir), head=FirstLastMean(dropout=0.0), lr=1e-3)
    before = model.head.classifier.net[-1].weight.clone()
    fit(model, make_batches(tiny_bert_dir, sst2_rows("train", 16, label=int)), steps=2)
    assert not torch.equal(before, model.head.classifier.net[-1].weight)
    assert model.hparams["head"]["class_path"] == f"{__name__}.FirstLastMean"


@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
def test_every_task_trains_and_predicts(tiny_bert_dir: Path, task: str) -> None:
    rows = sst2_rows("train", 16, label=int)
    label = {
        "classification": lambda y: y,
        "multilabel": lambda y: [float(y), 1.0 - y, 1.0],
        "regression": lambda y: float(y) * 5,
    }[task]
    model = FineTuner(str(tiny_bert_dir), task=task, num_labels=3 if task == "multilabel" else 2)
    loader = make_batches(tiny_bert_dir, [(text, label(y)) for text, y in rows])
    fit(model, loader, steps=2)
    metrics = quiet_trainer().validate(model, loader)[0]
    assert {"val/" + k for k in ["loss"]} <= set(metrics)
    assert model.monitor in metrics
    out = model.predict_step(next(iter(loader)), 0)
    if task == "regression":
        assert out["value"].shape == (8,)
    else:
        assert out["probs"].shape == (8, len(model.label_names))


def test_num_labels_disagreeing_with_label_names_is_refused(tiny_bert_dir: Path) -> None:
    with pytest.raises(ValueError, match="num_labels=3 disagrees"):
        FineTuner(str(tiny_bert_dir), num_labels=3, label_names=["neg", "pos"])


def test_parameter_groups(tiny_bert_dir: Path) -> None:
    model = FineTuner(
        str(tiny_bert_dir), head=WeightedLayersHead(), lr=1e-4, head_lr=1e-3, mix_lr=1e-2, layer_lr_decay=0.5
    )
    model.trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False)  # for estimated_stepping_batches
    optimizer = model.configure_optimizers()["optimizer"]
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    enc = model.encoder
    layer_norm = enc.encoder.layer[0].attention.output.LayerNorm
    assert by_param[id(layer_norm.weight)]["weight_decay"] == 0
    assert by_param[id(enc.encoder.layer[0].attention.self.query.bias)]["weight_decay"] == 0
    assert by_param[id(enc.embeddings.word_embeddings.weight)]["weight_decay"] == 0
    assert by_param[id(enc.encoder.layer[0].attention.self.query.weight)]["weight_decay"] == 0.01
    # Layer-wise decay: top layer (2 of 2) at lr * 0.5, layer 1 at lr * 0.25, embeddings at lr * 0.125.
    assert by_param[id(enc.encoder.layer[1].output.dense.weight)]["initial_lr"] == pytest.approx(1e-4 * 0.5)
    assert by_param[id(enc.encoder.layer[0].output.dense.weight)]["initial_lr"] == pytest.approx(1e-4 * 0.25)
    assert by_param[id(enc.embeddings.word_embeddings.weight)]["initial_lr"] == pytest.approx(1e-4 * 0.125)
    mix = by_param[id(model.head.mix.layer_logits)]
    assert (mix["initial_lr"], mix["weight_decay"]) == (pytest.approx(1e-2), 0)
    assert by_param[id(model.head.classifier.net[-1].weight)]["initial_lr"] == pytest.approx(1e-3)
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == n_trainable


def test_schedule_warms_up_then_decays_linearly() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_then_decay(opt, warmup_steps=4, total_steps=12, schedule="linear")
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[4:] == pytest.approx([1 - i / 8 for i in range(8)])


def test_schedule_counts_optimiser_steps_under_accumulation(tiny_bert_dir: Path) -> None:
    model = FineTuner(str(tiny_bert_dir), warmup_ratio=0.0)
    loader = make_batches(tiny_bert_dir, sst2_rows("train", 64, label=int), batch_size=4)  # 16 batches
    trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=4, limit_val_batches=0)
    trainer.fit(model, loader)
    assert trainer.global_step == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0)  # decayed to 0 at the last step
