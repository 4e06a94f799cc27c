"""Using a fine-tuned model: load an exported folder (or a checkpoint) and predict on a list of texts.

An exported folder (see :mod:`~bertft.deploy.export`) holds only safetensors, JSON and tokenizer files, so loading it
runs no pickle. Every file it lists is checked against its sha256 before anything is built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bertft.adapters import merge_adapters
from bertft.data.conll import TAGS, TOKENS
from bertft.data.encode import ROW
from bertft.data.files import Table
from bertft.data.tokens import WORD_INDEX, TokenEncodeSettings, encode_sentences
from bertft.deploy.onnx_backend import BACKENDS, OnnxModel
from bertft.encoder import forward_arguments, load_encoder, resolve_encoder, run_encoder
from bertft.heads import Head
from bertft.model import FineTuner, head_from_config
from bertft.ner import entities
from bertft.training.checks import read_checkpoint_safely

#: The description of an exported folder: head, task, labels, versions and the sha256 of every other file.
MANIFEST = "bertft.json"
#: The head's weights in an exported folder.
HEAD_WEIGHTS = "head.safetensors"
#: Bumped when the folder layout changes in a way older readers cannot follow.
FORMAT_VERSION = 1

Text = str | tuple[str, str]


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Reads an exported folder's ``bertft.json`` and checks every file it lists against its sha256.

    Raises:
        FileNotFoundError: The folder, its manifest, or a file the manifest lists is missing.
        ValueError: The manifest is unreadable or from a newer format, or a file's sha256 differs (it was altered).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a bertft export (make one with `bertft export`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest['format_version']}; this bertft reads up to {FORMAT_VERSION}. "
            "Upgrade bertft."
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path} lists no files and their sha256: it was not written by bertft export")
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing from the export (bertft.json lists it)")
        if sha256(file) != expected:
            raise ValueError(
                f"{file} was altered: its sha256 differs from the one recorded in {MANIFEST} at export time. "
                "Export the model again from its checkpoint."
            )
    return manifest


class EncoderWithHead(nn.Module):
    """An encoder and its head as one module taking tensors, for inference and ONNX export.

    The head runs in float32 whatever the encoder's dtype: it is tiny, and its reductions (``masked_mean``) return
    float32 anyway, which a bf16 linear layer would reject.

    Args:
        encoder: The fine-tuned Hugging Face encoder.
        head: The built head, with its trained weights.
    """

    def __init__(self, encoder: nn.Module, head: Head) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head.float()
        self.accepted = forward_arguments(encoder)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Returns float32 logits, ``(batch, num_outputs)``."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        out = run_encoder(
            self.encoder,
            batch,
            self.accepted,
            hidden_states=self.head.needs_hidden_states,
            attentions=self.head.needs_attentions,
            pooler=self.head.needs_pooler_output,
        )
        out.last_hidden_state = out.last_hidden_state.float()
        if out.pooler_output is not None:
            out.pooler_output = out.pooler_output.float()
        if out.hidden_states is not None:
            out.hidden_states = tuple(h.float() for h in out.hidden_states)
        if out.attentions is not None:
            out.attentions = tuple(a.float() for a in out.attentions)
        return self.head(out, attention_mask)


def read_checkpoint(ckpt_path: str | Path) -> tuple[FineTuner, str, int | None]:
    """Loads a Lightning checkpoint without pickle, with what inference needs besides the model.

    Returns:
        The model (eval mode, CPU), the tokenizer's name or folder, and the data's ``max_length`` when the checkpoint
        was written with a data module (the CLI's), else ``None``.

    Raises:
        FileNotFoundError: No file at ``ckpt_path``.
        UnsafeCheckpointError: The file would run code as it is unpickled (:mod:`~bertft.training.checks`); nothing ran.
        ValueError: The file is truncated or not a checkpoint.
    """
    path = Path(ckpt_path)
    # Read first on its own (memory-mapped, weights_only): a crafted or truncated file gets a clear error, not
    # Lightning's traceback. The data module's settings, not part of the model, come from it too.
    raw = read_checkpoint_safely(path)
    model = FineTuner.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    data = raw.get(LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY) or {}
    tokenizer = data.get("tokenizer") or model.hparams["encoder"]
    return model, str(tokenizer), data.get("max_length")


class Predictor:
    """Predicts labels for texts with a fine-tuned encoder and head; make one with :func:`load`.

    Args:
        model: Encoder and head, or their ONNX graph (:class:`~bertft.deploy.onnx_backend.OnnxModel`).
        tokenizer: The encoder's tokenizer.
        task: ``classification``, ``multilabel`` or ``regression``.
        label_names: Label names in logit order (empty for regression).
        threshold: Probability above which a label is predicted (multilabel).
        max_length: Token limit, special tokens included; longer texts are truncated.
        device: Where to run.
        dtype: Weight dtype of the encoder (``None`` keeps float32); the head stays float32.
    """

    def __init__(
        self,
        model: EncoderWithHead | OnnxModel,
        tokenizer: PreTrainedTokenizerBase,
        task: str,
        label_names: list[str],
        threshold: float = 0.5,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device)
        if isinstance(model, EncoderWithHead):
            model.encoder.to(device=self.device, dtype=dtype)
            positions = model.encoder.config.max_position_embeddings
        else:  # an OnnxModel (bertft.deploy.onnx_backend): ONNX Runtime on the CPU
            positions = model.max_position_embeddings
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.task = task
        self.label_names = list(label_names)
        self.threshold = threshold
        if max_length is None:  # the model's own limit; the tokenizer's default can be a huge sentinel
            max_length = min(tokenizer.model_max_length, positions)
        self.max_length = max_length

    @classmethod
    def from_checkpoint(
        cls, ckpt_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Predictor:
        """A predictor straight from a Lightning checkpoint (no export needed; the encoder's files must be at hand)."""
        model, tokenizer, max_length = read_checkpoint(ckpt_path)
        return cls(
            EncoderWithHead(merge_adapters(model.encoder), model.head),  # LoRA adapters folded in: one matmul each
            AutoTokenizer.from_pretrained(resolve_encoder(tokenizer)),
            model.task,
            model.label_names,
            model.threshold,
            max_length,
            device,
            dtype,
        )

    def logits(self, texts: Sequence[Text], batch_size: int = 32) -> Tensor:
        """Float32 logits on the CPU, ``(len(texts), num_outputs)``, in input order.

        Args:
            texts: Strings, or ``(text, text_pair)`` tuples for pair tasks.
            batch_size: Texts per forward pass. Texts are sorted by length first, so each batch pads little.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        enc = self._tokenize(texts)
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # longest first: fail early on memory
        chunks: list[Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self._pad(enc, rows)
                logits = self.model(**batch)
                if logits.dim() != 2:
                    raise ValueError(
                        f"head {type(getattr(self.model, 'head', self.model)).__name__} returns per-token logits "
                        f"{tuple(logits.shape)}; "
                        "Predictor handles one prediction per text"
                    )
                chunks.append(logits.float().cpu())
        if not chunks:
            return torch.empty(0, 1 if self.task == "regression" else len(self.label_names))
        result = torch.empty(len(order), chunks[0].shape[-1])
        result[torch.tensor(order)] = torch.cat(chunks)  # back to input order
        return result

    def predict(self, texts: Sequence[Text], batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per text, in input order (for a token-classification model, see :meth:`predict_tokens`).

        Each has ``label``: the label name (classification), the list of names above the threshold (multilabel) or
        the value (regression); and for classification and multilabel ``probs``, ``{name: probability}``.
        """
        if self.task == "token":
            return self.predict_tokens(texts, batch_size)  # type: ignore[arg-type]
        logits = self.logits(texts, batch_size)
        if self.task == "regression":
            return [{"label": v} for v in logits.squeeze(-1).tolist()]
        names = self.label_names
        if self.task == "classification":
            probs = torch.softmax(logits, dim=-1)
            labels = [names[i] for i in probs.argmax(dim=-1).tolist()]
        else:
            probs = torch.sigmoid(logits)
            # ">" as in torchmetrics' multilabel metrics, so predictions agree with the validation scores.
            labels = [
                [n for n, above in zip(names, row, strict=True) if above] for row in (probs > self.threshold).tolist()
            ]
        return [
            {"label": label, "probs": dict(zip(names, row, strict=True))}
            for label, row in zip(labels, probs.tolist(), strict=True)
        ]

    def predict_tokens(
        self, sentences: Sequence[Sequence[str]], batch_size: int = 32, stride: int = 32
    ) -> list[dict[str, Any]]:
        """Tags pre-split sentences with a token-classification model (NER), one tag per word, in input order.

        Sentences longer than ``max_length`` sub-tokens are cut into overlapping windows and merged back exactly as in
        training and evaluation (:mod:`bertft.data.tokens`), so every word gets one tag.

        Args:
            sentences: One list of words per sentence.
            batch_size: Windows per forward pass.
            stride: Sub-tokens shared by consecutive windows of a long sentence.

        Returns:
            ``{"tokens", "tags", "entities": [{"text", "type", "start", "end"}]}`` per sentence (``end`` exclusive).
        """
        if self.task != "token":
            raise ValueError(f"predict_tokens needs a token-classification model; this one is {self.task!r}")
        if isinstance(sentences, str) or any(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be lists of words, e.g. [['EU', 'rejects', 'German', 'call']]")
        words = [list(s) for s in sentences]
        frame = pd.DataFrame({TOKENS: words, TAGS: [None] * len(words)}, dtype=object)
        table = Table("<sentences>", frame, list(range(1, len(words) + 1)), unit="sentence")
        windows, _ = encode_sentences(table, self.tokenizer, TokenEncodeSettings(False, self.max_length, stride))
        tags = [[""] * len(w) for w in words]
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i]["input_ids"]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                keys = [k for k in ("input_ids", "token_type_ids") if k in windows.column_names]
                enc = {key: [windows[i][key] for i in rows] for key in keys}
                enc["attention_mask"] = [[1] * len(ids) for ids in enc["input_ids"]]
                batch = self._pad(enc, list(range(len(rows))))
                predicted = self.model(**batch).argmax(dim=-1).cpu().tolist()  # (B, T)
                for b, i in enumerate(rows):
                    for position, word in enumerate(windows[i][WORD_INDEX]):
                        if word >= 0:
                            tags[windows[i][ROW]][word] = self.label_names[predicted[b][position]]
        return [
            {
                "tokens": w,
                "tags": t,
                "entities": [
                    {"text": " ".join(w[e.start : e.end]), "type": e.type, "start": e.start, "end": e.end}
                    for e in entities(t)
                ],
            }
            for w, t in zip(words, tags, strict=True)
        ]

    def _tokenize(self, texts: Sequence[Text]) -> dict[str, list[list[int]]]:
        if isinstance(texts, str | tuple):
            raise TypeError("texts must be a list of strings or of (text, text_pair) tuples, not a single text")
        texts = list(texts)
        pairs = [isinstance(t, tuple) for t in texts]
        if any(pairs) and not all(pairs):
            raise ValueError("texts mixes strings and (text, text_pair) tuples: give one kind")
        if any(pairs):
            if any(len(t) != 2 for t in texts):
                raise ValueError("every (text, text_pair) tuple must have exactly two strings")
            first, second = [t[0] for t in texts], [t[1] for t in texts]
        else:
            first, second = texts, None
        if not texts:
            return {"input_ids": []}
        # Pairs carry token_type_ids as in training (bertft.data.encode), whatever the tokenizer's default.
        pair = second is not None or None
        return dict(
            self.tokenizer(first, second, truncation=True, max_length=self.max_length, return_token_type_ids=pair)
        )

    def _pad(self, enc: dict[str, list[list[int]]], rows: list[int]) -> dict[str, Tensor]:
        # Right padding with the tokenizer's pad id, exactly as `tokenizer(..., padding=True)` would do.
        width = max(len(enc["input_ids"][i]) for i in rows)
        pad = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
        batch = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in enc:
                padded = [enc[key][i] + [pad[key]] * (width - len(enc[key][i])) for i in rows]
                batch[key] = torch.tensor(padded, dtype=torch.long, device=self.device)
        return batch


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    backend: str = "torch",
    threads: int = 0,
) -> Predictor:
    """Loads an exported folder (or a Lightning checkpoint) for inference; needs nothing but the folder.

    Args:
        path: A folder written by :func:`bertft.deploy.export.export`, or a ``.ckpt`` file (then as
            :meth:`Predictor.from_checkpoint`: loaded with ``weights_only=True``, the encoder's files must be at hand).
        device: Where to run, e.g. ``"cuda"`` (the ONNX backends run on the CPU).
        dtype: Weight dtype of the encoder, e.g. ``torch.bfloat16``; ``None`` keeps float32.
        backend: ``"torch"``; ``"onnx"``, the folder's ``model.onnx`` (``bertft export --onnx``) on ONNX Runtime;
            or ``"onnx-int8"``, its int8 copy (``bertft export --onnx --quantize int8``).
        threads: ONNX Runtime's intra-op threads (0: one per core); the torch backend uses ``torch.set_num_threads``.

    Raises:
        FileNotFoundError: A file is missing (named in the message), e.g. the ONNX graph a backend needs.
        ValueError: A file was altered since export, the head does not fit the encoder, a checkpoint was refused
            because unpickling it would run code, or an unknown backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    folder = Path(path)
    if folder.is_file():
        if backend != "torch":
            raise ValueError(f"backend={backend!r} needs an exported folder (bertft export --onnx), not {path}")
        return Predictor.from_checkpoint(folder, device, dtype)
    manifest = read_manifest(folder)
    model: EncoderWithHead | OnnxModel
    if backend == "torch":
        head = head_from_config(manifest["head"])
        encoder = load_encoder(
            str(folder), with_pooler=head.needs_pooler_output, with_attentions=head.needs_attentions
        ).eval()
        num_outputs = 1 if manifest["task"] == "regression" else manifest["num_labels"]
        config = encoder.config
        head.build(config.hidden_size, config.num_hidden_layers, num_outputs, config.num_attention_heads)
        head.load_state_dict(load_file(folder / HEAD_WEIGHTS))
        model = EncoderWithHead(encoder, head)
    else:
        name = manifest.get("onnx") if backend == "onnx" else manifest.get("onnx_int8")
        if not name:
            option = "--onnx" if backend == "onnx" else "--onnx --quantize int8"
            raise FileNotFoundError(f"{folder} has no {backend} graph: export it with `bertft export {option}`")
        encoder_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model = OnnxModel(folder / name, encoder_config.get("max_position_embeddings", 512), threads)
    return Predictor(
        model,
        AutoTokenizer.from_pretrained(folder),
        manifest["task"],
        manifest["label_names"],
        manifest["threshold"],
        manifest["max_length"],
        device,
        dtype,
    )
