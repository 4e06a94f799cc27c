"""Tiny random encoders of every BERT family bertft supports, each with a real tokenizer of its kind trained here.

Each tokenizer is trained with ``tokenizers`` on bundled text (SST-2 sentences and CoNLL-2003 words; the Chinese
review and MSRA slices in ``tests/fixtures/zh`` for the Chinese model), then handed to the family's own transformers
class, which sets its normaliser, pre-tokeniser and special-token template as a hub checkpoint's would. Models are
random, 2 layers of width 32, saved with ``save_pretrained`` so tests load them through ``from_pretrained``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from .helpers import BUNDLED, sst2_rows

ZH = Path(__file__).resolve().parent / "fixtures" / "zh"
VOCAB = 2000  # small, so words split into several pieces and alignment is exercised
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}


@dataclass(frozen=True)
class Family:
    """One encoder family as the tests build it.

    Attributes:
        name: Test id.
        model_type: transformers' ``model_type``.
        tokenizer: ``wordpiece``, ``bpe`` (byte-level), ``unigram`` (SentencePiece-style) or ``chars`` (Chinese).
        pooler: Whether ``AutoModel`` builds a pooler (``PoolerHead`` works).
        token_types: Whether the encoder reads ``token_type_ids`` (sentence pairs mark their second text).
        shared_layers: Whether its layers share one set of weights (ALBERT).
        checkpointing: Whether transformers implements gradient checkpointing for it.
    """

    name: str
    model_type: str
    tokenizer: str
    pooler: bool
    token_types: bool
    shared_layers: bool = False
    checkpointing: bool = True


FAMILIES = [
    Family("bert", "bert", "wordpiece", pooler=True, token_types=True),
    Family("bert-cased", "bert", "wordpiece", pooler=True, token_types=True),
    Family("bert-chinese", "bert", "chars", pooler=True, token_types=True),
    Family("electra", "electra", "wordpiece", pooler=False, token_types=True),
    Family("distilbert", "distilbert", "wordpiece", pooler=False, token_types=False),
    Family("roberta", "roberta", "bpe", pooler=True, token_types=False),
    Family("modernbert", "modernbert", "bpe", pooler=False, token_types=False),
    Family("xlm-roberta", "xlm-roberta", "unigram", pooler=True, token_types=False),
    Family("albert", "albert", "unigram", pooler=True, token_types=True, shared_layers=True, checkpointing=False),
    Family("deberta-v2", "deberta-v2", "unigram", pooler=False, token_types=False),  # type_vocab_size=0, as v3's
    Family("mpnet", "mpnet", "wordpiece", pooler=True, token_types=False, checkpointing=False),
]
BY_NAME = {f.name: f for f in FAMILIES}


def english_corpus() -> list[str]:
    """SST-2 training sentences and CoNLL-2003 training sentences (cased), from the bundled files."""
    texts = [text for text, _ in sst2_rows("train", 5000)]
    sentence: list[str] = []
    with open(BUNDLED / "conll2003" / "train.txt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                sentence.append(line.split()[0])
            elif sentence:
                texts.append(" ".join(sentence))
                sentence = []
    return texts


def chinese_corpus() -> list[str]:
    """The Chinese review and MSRA NER slices that ship with the tests."""
    texts = []
    for split in ("train", "dev", "test"):
        with open(ZH / f"sentiment_{split}.csv", encoding="utf-8", newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
        blocks = (ZH / f"msra_{split}.txt").read_text(encoding="utf-8").split("\n\n")
        texts += ["".join(line.split()[0] for line in b.splitlines() if line.strip()) for b in blocks]
    return texts


def _wordpiece(texts: list[str], specials: list[str], lowercase: bool, vocab_size: int = VOCAB) -> dict[str, int]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)  # also puts spaces around CJK characters
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    return tok.get_vocab()


def _bpe(texts: list[str], specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return tok.get_vocab(), [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def _unigram(texts: list[str], specials: list[str], unk: str, lowercase: bool) -> list[tuple[str, float]]:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials, unk_token=unk))
    return [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]


def build_tokenizer(family: Family, english: list[str]):  # noqa: ANN201 - a transformers tokenizer of the family
    """The family's own tokenizer class around a vocabulary trained on bundled text."""
    import transformers as tf

    bert_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    name = family.name
    if name == "bert-chinese":  # character-level, as bert-base-chinese: every CJK character is its own token
        return tf.BertTokenizer(vocab=_wordpiece(chinese_corpus(), bert_specials, True, 4000), do_lower_case=True)
    if name in ("bert", "electra", "distilbert"):
        cls = {"bert": tf.BertTokenizer, "electra": tf.ElectraTokenizer, "distilbert": tf.DistilBertTokenizer}[name]
        return cls(vocab=_wordpiece(english, bert_specials, True), do_lower_case=True)
    if name == "bert-cased":
        return tf.BertTokenizer(vocab=_wordpiece(english, bert_specials, False), do_lower_case=False)
    if name == "mpnet":
        specials = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]
        return tf.MPNetTokenizer(vocab=_wordpiece(english, specials, True), do_lower_case=True)
    if name == "roberta":
        vocab, merges = _bpe(english, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return tf.RobertaTokenizer(vocab=vocab, merges=merges)
    if name == "modernbert":  # ModernBERT checkpoints ship a generic tokenizer.json: byte-level BPE, [CLS] x [SEP]
        from tokenizers import processors

        vocab, merges = _bpe(english, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = __import__("tokenizers").decoders.ByteLevel()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return tf.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            model_input_names=["input_ids", "attention_mask"],
            **{
                k: f"[{v}]"
                for k, v in [
                    ("pad_token", "PAD"),
                    ("unk_token", "UNK"),
                    ("cls_token", "CLS"),
                    ("sep_token", "SEP"),
                    ("mask_token", "MASK"),
                ]
            },  # fmt: skip
        )
    if name == "xlm-roberta":
        return tf.XLMRobertaTokenizer(vocab=_unigram(english, ["<s>", "<pad>", "</s>", "<unk>"], "<unk>", False))
    if name == "albert":
        vocab = _unigram(english, ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>", True)
        return tf.AlbertTokenizer(vocab=vocab, do_lower_case=True)
    if name == "deberta-v2":
        vocab = _unigram(english, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[UNK]", False)
        return tf.DebertaV2Tokenizer(vocab=vocab, unk_id=3)
    raise ValueError(f"no tokenizer recipe for {name!r}")


def build_model(family: Family, tokenizer):  # noqa: ANN001, ANN201 - transformers objects
    """A tiny random model of the family, sized to the tokenizer's vocabulary."""
    import transformers as tf

    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    t = family.model_type
    if t == "bert":
        return tf.BertModel(tf.BertConfig(**ids, **SIZES))
    if t == "electra":
        return tf.ElectraModel(tf.ElectraConfig(**ids, embedding_size=16, **SIZES))
    if t == "distilbert":
        return tf.DistilBertModel(tf.DistilBertConfig(**ids, dim=32, n_layers=2, n_heads=4, hidden_dim=37))
    if t == "roberta":
        # One segment type and positions offset past the padding id, as in the hub checkpoints.
        return tf.RobertaModel(tf.RobertaConfig(**ids, max_position_embeddings=514, type_vocab_size=1, **SIZES))
    if t == "xlm-roberta":
        config = tf.XLMRobertaConfig(**ids, max_position_embeddings=514, type_vocab_size=1, **SIZES)
        return tf.XLMRobertaModel(config)
    if t == "albert":
        return tf.AlbertModel(tf.AlbertConfig(**ids, embedding_size=16, **SIZES))
    if t == "deberta-v2":
        return tf.DebertaV2Model(tf.DebertaV2Config(**ids, **SIZES))
    if t == "mpnet":
        return tf.MPNetModel(tf.MPNetConfig(**ids, **SIZES))
    if t == "modernbert":
        special = {k: tokenizer.convert_tokens_to_ids(v) for k, v in [("cls_token_id", "[CLS]"),
                   ("sep_token_id", "[SEP]"), ("bos_token_id", "[CLS]"), ("eos_token_id", "[SEP]")]}  # fmt: skip
        sizes = {**SIZES, "intermediate_size": 64}  # its gated MLP splits this in two halves
        return tf.ModernBertModel(tf.ModernBertConfig(**ids, **special, **sizes))
    raise ValueError(f"no model recipe for {t!r}")


def save_family(family: Family, path: Path, english: list[str]) -> Path:
    """Trains the tokenizer, builds the model, and saves both into ``path`` as a hub checkpoint folder is laid out."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(family, english)
    build_model(family, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
