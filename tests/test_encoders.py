"""Every supported BERT family end to end: tiny random models with real tokenizers of their kind (tests/families.py).

Each family goes through the command line (fit + test on sentence pairs, export --onnx) and the public API (every
head, token classification with word alignment and windows, bertft.load, layer-wise decay, freezing, gradient
checkpointing and FSDP's wrap policy). The table in docs/guides/encoders.md states what these tests show.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bertft import FineTuner, tasks
from bertft.cli import main
from bertft.data import TextDataModule, TokenCollator, TokenDataModule, load_tokenizer, read_token_file
from bertft.data.conll import TAGS, TOKENS
from bertft.data.tokens import TokenEncodeSettings, encode_sentences, word_tokenizer
from bertft.deploy.inference import load
from bertft.encoder import embeddings_module, transformer_layers
from bertft.heads import (
    AttentionMapHead,
    AttentionPoolingHead,
    CLSHead,
    FirstLastMeanHead,
    MeanHead,
    MeanMaxHead,
    PoolerHead,
    TokenHead,
)
from bertft.optim import parameter_groups
from bertft.training.distributed import wrap_encoder_layers

from .families import FAMILIES, ZH, Family
from .helpers import (
    CONFIGS,
    bundled_lines,
    cli_args,
    quiet_trainer,
    run_bertft,
    sst2_rows,
    subset,
    word_predictions,
    write_conll,
    write_lines,
    write_tsv,
)

NAMES = [f.name for f in FAMILIES]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's few-batches and worker warnings


def family_param(names: list[str] = NAMES) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("family", [f for f in FAMILIES if f.name in names], ids=lambda f: f.name)


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small real SST-2 splits (train: 32 rows, val/test: 16)."""
    folder = tmp_path_factory.mktemp("sst2")
    splits = [("train", "train", 32), ("val", "dev", 16), ("test", "test", 16)]
    return {split: write_tsv(folder / f"{split}.tsv", sst2_rows(source, n)) for split, source, n in splits}


@pytest.fixture(scope="module")
def stsb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Real STS-B pairs, in the bundled files' own layout (read by configs/stsb.yaml): 32 to train, 16 to evaluate."""
    folder = tmp_path_factory.mktemp("stsb")
    return {
        "train": write_lines(folder / "train.csv", bundled_lines("stsb/sts-train.csv")[:32]),
        "val": write_lines(folder / "dev.csv", bundled_lines("stsb/sts-dev.csv")[:16]),
    }


def sentence_pairs(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [(row[5], row[6]) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


# ----- the command line: fit + test on pairs, predict, export --onnx, bertft.load ----------------------------------


@pytest.mark.slow
@family_param()
def test_cli_fit_on_pairs_then_predict_export_and_load(
    family: Family, family_dir, stsb_files: dict[str, str], tmp_path: Path
) -> None:
    encoder = family_dir(family.name)
    args = cli_args(
        tmp_path / "run",
        "--data.max_length=48",
        "--trainer.max_epochs=1",  # with 4 steps, one epoch: validation picks a best checkpoint
        "--trainer.enable_model_summary=false",
        configs=[CONFIGS / "stsb.yaml", CONFIGS / "heads" / "weighted.yaml"],  # weighted: L + 1 hidden states
        encoder=encoder,
        train=stsb_files["train"],
        val=stsb_files["val"],
        test=stsb_files["val"],
        batch_size=8,
        max_steps=4,
        cache_dir=tmp_path / "cache",
    )
    cli = main(args)
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])  # fit's own test ran on the best checkpoint
    ckpt = next((tmp_path / "run").rglob("best-*.ckpt"))

    main(["export", f"--ckpt_path={ckpt}", f"--output_dir={tmp_path / 'export'}", "--onnx"])
    pairs = sentence_pairs(stsb_files["val"])[:6]
    predictor = load(tmp_path / "export")
    exported = predictor.logits(pairs)

    model = FineTuner.load_from_checkpoint(ckpt, weights_only=True).eval()
    tokenizer = load_tokenizer(str(encoder))
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_token_type_ids=True,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        direct = model(dict(enc))
    torch.testing.assert_close(exported, direct, atol=1e-5, rtol=1e-4)

    predictions = tmp_path / "predictions.csv"
    config = next((tmp_path / "run").rglob("config.yaml"))
    main(cli_args(tmp_path / "run", f"--ckpt_path={ckpt}", f"--prediction.output_file={predictions}", command="predict",
                  configs=[config], predict=stsb_files["val"], logger=False, cache_dir=tmp_path / "cache"))  # fmt: skip
    with open(predictions, encoding="utf-8") as f:
        predicted = [float(r["prediction"]) for r in csv.DictReader(f)][:6]  # in the file's order
    torch.testing.assert_close(torch.tensor(predicted), direct.flatten(), atol=1e-4, rtol=1e-3)

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    assert ("token_type_ids" in wanted) == family.token_types  # only encoders with segment embeddings take them
    onnx_logits = session.run(None, {k: v.numpy() for k, v in enc.items() if k in wanted})[0]
    torch.testing.assert_close(torch.from_numpy(onnx_logits), direct, atol=1e-4, rtol=1e-3)


# ----- every head, fit + test through the Python API ----------------------------------------------------------------


@family_param()
def test_every_head_fits_and_tests(family: Family, family_dir, sst2_files: dict[str, str], tmp_path: Path) -> None:
    encoder = str(family_dir(family.name))
    data = TextDataModule(
        train_file=str(sst2_files["train"]), test_file=str(sst2_files["test"]), quoting=False, tokenizer=encoder,
        batch_size=16, max_length=48, cache_dir=str(tmp_path),
    )  # fmt: skip
    for head in (MeanHead(), CLSHead()):  # WeightedLayersHead: the command-line test above
        model = FineTuner(encoder, head=head, label_names=data.label_names, lr=1e-3)
        before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        t = quiet_trainer(max_steps=2, limit_val_batches=0)
        t.fit(model, datamodule=data)
        [metrics] = t.test(model, datamodule=data, verbose=False)
        assert 0.0 <= metrics["test/acc"] <= 1.0
        moved = [k for k, v in model.encoder.state_dict().items() if not torch.equal(v, before[k])]
        assert any(".0." in k or "groups.0" in k for k in moved), (
            f"{type(head).__name__}: the first layer never trained"
        )
    if not family.pooler:
        with pytest.raises(ValueError, match="has no pooler"):
            FineTuner(encoder, head=PoolerHead(), label_names=data.label_names)
        return
    model = FineTuner(encoder, head=PoolerHead(), label_names=data.label_names)
    batch = next(iter(data.test_dataloader()))
    loss = tasks.loss("classification", model(batch), batch["labels"])
    loss.backward()
    assert model.encoder.pooler is not None  # built only for this head, and trained by it
    assert all(p.grad is not None for p in model.encoder.pooler.parameters())


@family_param()
def test_the_heads_for_every_output_fit_each_family_and_ignore_padding(family: Family, family_dir) -> None:
    """Each new head on the family's real encoder: its shape, attention maps only when it reads them (and then with
    eager attention), and the same logits for a text alone as padded beside a longer one."""
    encoder = str(family_dir(family.name))
    tokenizer = load_tokenizer(encoder)
    texts = ["a short text", "and a somewhat longer one that needs more tokens"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    alone = dict(tokenizer(texts[:1], return_tensors="pt"))
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the short text is padded
    for head in (MeanMaxHead(), FirstLastMeanHead(first=0), AttentionPoolingHead(scorer_dim=8),
                 AttentionMapHead(layers=[1, -1], mix="learned")):  # fmt: skip
        torch.manual_seed(0)
        model = FineTuner(encoder, head=head).eval()
        for p in head.parameters():  # the learned weightings away from their even start
            torch.nn.init.normal_(p, std=0.5)
        attention = model.encoder.config._attn_implementation
        if head.needs_attentions:
            assert attention == "eager", f"{family.name}: attention maps need eager attention, got {attention!r}"
        elif family.name == "bert":
            assert attention != "eager", "a head that reads no maps keeps the efficient attention"
        with torch.no_grad():
            out = model.encode(batch)
            assert (out.attentions is not None) == head.needs_attentions
            logits = model(batch)
            assert logits.shape == (2, 2)
            torch.testing.assert_close(model(alone)[0], logits[0], rtol=1e-4, atol=1e-4)


# ----- sentence pairs: token_type_ids only where the encoder has segment embeddings ----------------------------------


@family_param()
def test_pairs_pass_token_type_ids_only_to_encoders_that_read_them(
    family: Family, family_dir, stsb_files: dict[str, str], tmp_path: Path
) -> None:
    encoder = str(family_dir(family.name))
    data = TextDataModule(
        train_file=str(stsb_files["train"]), file_format="tsv", header=False, quoting=False,
        column_names=["genre", "file", "year", "id", "score", "sentence1", "sentence2"], extra_fields="ignore",
        text_column="sentence1", text_pair_column="sentence2", label_column="score", task="regression",
        tokenizer=encoder, batch_size=8, cache_dir=str(tmp_path),
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert "token_type_ids" in batch  # the data always carries them for pairs; the encoder decides
    model = FineTuner(encoder, task="regression", num_labels=1)
    calls: list[dict] = []
    model.encoder.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    assert torch.isfinite(model(batch)).all()
    assert ("token_type_ids" in calls[-1]) == family.token_types
    if family.token_types:  # the second text marked with 1s, which these encoders embed
        assert (batch["token_type_ids"] == 1).any()
        torch.testing.assert_close(calls[-1]["token_type_ids"], batch["token_type_ids"])


# ----- token classification: alignment per tokenizer kind, windows, a short fit and prediction ---------------------


def sentences_for(family: Family):
    if family.tokenizer == "chars":  # Chinese NER: one word per character
        return read_token_file(str(ZH / "msra_dev.txt"))
    return read_token_file("bundled://conll2003/dev.txt")


@family_param()
def test_words_split_as_in_running_text_and_windows_merge_back(family: Family, family_dir) -> None:
    tokenizer = load_tokenizer(str(family_dir(family.name)))
    table = sentences_for(family)
    lengths = [len(w) for w in table.frame[TOKENS]]
    rows = list(range(30)) + sorted(range(len(lengths)), key=lambda i: -lengths[i])[:5]  # the longest get windows
    table = subset(table, rows)
    words = word_tokenizer(tokenizer)
    joiner = " "  # a Chinese sentence's "words" are characters: the same as the spaced text, never merged digits
    for sentence in table.frame[TOKENS][:30]:
        split = words(list(sentence), is_split_into_words=True, add_special_tokens=False)["input_ids"]
        running = words(joiner.join(sentence), add_special_tokens=False)["input_ids"]
        assert split == running, f"{sentence}: words split otherwise than in the running text"
    if family.tokenizer == "bpe":  # without a prefix space every word would be split as a word's continuation
        sentence = list(table.frame[TOKENS][0])
        raw = tokenizer(sentence, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        assert raw != words(sentence, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    if family.tokenizer == "chars":
        enc = words(list(table.frame[TOKENS][0]), is_split_into_words=True, add_special_tokens=False)
        assert enc.word_ids() == list(range(len(table.frame[TOKENS][0])))  # one token per character

    tags = sorted({t for s in table.frame[TAGS] for t in s})
    dataset, meta = encode_sentences(table, tokenizer, TokenEncodeSettings(True, max_length=24, stride=6))
    assert meta["windowed"] >= 5
    found = word_predictions(dataset, TokenCollator(tokenizer.pad_token_id, tags), tags)
    for i, sentence_tags in enumerate(table.frame[TAGS]):
        assert [found[i][w] for w in range(len(sentence_tags))] == sentence_tags  # every word once, windows merged


@family_param()
def test_token_classification_fits_and_tags_every_word(family: Family, family_dir, tmp_path: Path) -> None:
    encoder = str(family_dir(family.name))
    source = sentences_for(family)
    train = write_conll(tmp_path / "train.txt", source, range(32))
    data = TokenDataModule(train_file=train, tokenizer=encoder, max_length=24, stride=6, batch_size=16,
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    names = data.label_names
    model = FineTuner(encoder, head=TokenHead(), task="token", num_labels=len(names), label_names=names, lr=1e-3)
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
    predictor = load_predictor(model, encoder)
    sentences = [list(w) for w in source.frame[TOKENS][32:40]]
    for words, result in zip(sentences, predictor.predict_tokens(sentences, stride=4), strict=True):
        assert result["tokens"] == words
        assert len(result["tags"]) == len(words)


def load_predictor(model: FineTuner, encoder: str):
    from bertft.deploy.inference import EncoderWithHead, Predictor

    model.eval()
    return Predictor(EncoderWithHead(model.encoder, model.head), load_tokenizer(encoder), "token",
                     model.label_names, max_length=16)  # fmt: skip


# ----- what optimisation and memory options find in each encoder ---------------------------------------------------


@family_param()
def test_layer_decay_freezing_checkpointing_and_fsdp_find_the_layers(family: Family, family_dir) -> None:
    encoder = str(family_dir(family.name))
    model = FineTuner(encoder, freeze_embeddings=True)
    layers = transformer_layers(model.encoder)
    word = model.encoder.get_input_embeddings()
    assert any(p is word.weight for p in embeddings_module(model.encoder).parameters())
    assert not word.weight.requires_grad
    assert all(p.requires_grad for p in layers.parameters())
    wrapped = [m for m in model.modules() if wrap_encoder_layers(m, recurse=False, nonwrapped_numel=0)]

    if not family.checkpointing:  # transformers implements none for ALBERT and MPNet: refused before training
        with pytest.raises(ValueError, match="gradient_checkpointing: transformers does not implement it"):
            FineTuner(encoder, gradient_checkpointing=True)
    if family.shared_layers:  # ALBERT: one group of weights runs both layers
        assert len(layers) == 1
        assert wrapped == []  # FSDP keeps the shared layer in the root unit
        with pytest.raises(ValueError, match="shared set.*no layer has weights of its own"):
            FineTuner(encoder, layer_lr_decay=0.8)
        assert model(tokenized(encoder)).shape == (2, 2)
        return

    assert len(layers) == 2
    assert [id(m) for m in wrapped] == [id(m) for m in layers]
    decayed = FineTuner(encoder, layer_lr_decay=0.5)
    groups = parameter_groups(decayed.encoder, decayed.head, lr=1.0, head_lr=1.0, mix_lr=1.0, weight_decay=0.0,
                              layer_lr_decay=0.5)  # fmt: skip
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    enc_layers = transformer_layers(decayed.encoder)
    assert {lr_of[id(p)] for p in enc_layers[0].parameters()} == {0.25}
    assert {lr_of[id(p)] for p in enc_layers[1].parameters()} == {0.5}
    assert lr_of[id(decayed.encoder.get_input_embeddings().weight)] == 0.125

    if family.checkpointing:
        batch = tokenized(encoder)
        grads = []
        for checkpointing in (False, True):
            torch.manual_seed(0)
            m = FineTuner(encoder, gradient_checkpointing=checkpointing, encoder_dropout=0.0).train()
            m(batch).sum().backward()
            grads.append(next(transformer_layers(m.encoder)[0].parameters()).grad)
        torch.testing.assert_close(grads[0], grads[1])  # recomputed activations give the same gradient


def tokenized(encoder: str) -> dict[str, torch.Tensor]:
    return dict(load_tokenizer(encoder)(["a short text", "and a somewhat longer one"], padding=True,
                                        return_tensors="pt"))  # fmt: skip


# ----- what is not a BERT-family encoder is refused before training ------------------------------------------------


def save_config(path: Path, config) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    return path


@pytest.mark.parametrize("kind", ["gpt2", "t5", "vit"])
def test_other_architectures_are_refused_naming_the_families(kind: str, tmp_path: Path) -> None:
    from transformers import GPT2Config, T5Config, ViTConfig

    config = {"gpt2": GPT2Config(n_layer=2, n_embd=32, n_head=4), "t5": T5Config(d_model=32, num_layers=2),
              "vit": ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)}[kind]  # fmt: skip
    path = save_config(tmp_path / kind, config)  # a config alone: refused before any weights are read
    with pytest.raises(ValueError, match="BERT-family encoders") as err:
        FineTuner(str(path))
    assert "RoBERTa" in str(err.value)
    assert "ALBERT" in str(err.value)


def test_cli_refuses_a_decoder_with_exit_code_2(tmp_path: Path, capsys) -> None:
    from transformers import GPT2Config

    path = save_config(tmp_path / "gpt2", GPT2Config(n_layer=2, n_embd=32, n_head=4))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "debug.yaml"), f"--model.encoder={path}",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "'gpt2' model, not a bidirectional text encoder" in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()


# ----- one real command line, in its own process: ALBERT, which failed before shared layers were understood -------


@pytest.mark.slow
def test_albert_through_the_real_command_line(family_dir, sst2_files: dict[str, str], tmp_path: Path) -> None:
    args = cli_args(tmp_path, "--trainer.val_check_interval=2", configs=[CONFIGS / "debug.yaml"],
                    encoder=family_dir("albert"), train=sst2_files["train"], val=sst2_files["val"],
                    test=sst2_files["test"], max_steps=2)  # fmt: skip
    result = run_bertft(*args, timeout=300)
    assert "could not find" not in result.stderr
    assert list(tmp_path.rglob("last.ckpt"))
