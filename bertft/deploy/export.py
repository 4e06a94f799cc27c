"""Exporting a fine-tuned checkpoint to a self-contained folder: safetensors, tokenizer, JSON, optionally ONNX.

``python -m bertft export --ckpt_path best.ckpt --output_dir my-model [--onnx]`` writes::

    my-model/
      config.json, model.safetensors     the fine-tuned encoder (``save_pretrained``)
      tokenizer.json, vocab.txt, ...     its tokenizer
      head.safetensors                   the head's weights
      model.onnx                         encoder + head, with --onnx
      model.int8.onnx                    its int8 dynamic quantization, with --onnx --quantize int8
      bertft.json                        head config, task, labels, threshold, max_length, versions, sha256 of files
      adapter/                           with --adapter, a LoRA model's adapter in peft's own format

A LoRA checkpoint (``model.peft``) is exported with its adapters merged into the encoder's weights
(``merge_and_unload``), so the folder, the ONNX file and ``bertft.load`` are those of a plain fine-tuned model.

Load it with ``bertft.load("my-model")``. Nothing in the folder is a pickle.

Which heads Hugging Face can load on its own: a :class:`~bertft.heads.PoolerHead` without a hidden layer on a BERT
encoder is exactly ``BertForSequenceClassification`` (pooler, dropout, linear classifier). For it the export saves
the full ``BertForSequenceClassification`` state (``bert.``-prefixed encoder weights, ``classifier.weight/bias``) with
``architectures``, ``id2label``, ``label2id``, ``num_labels`` and ``problem_type`` in ``config.json``, so
``AutoModelForSequenceClassification.from_pretrained(folder)`` gives the same logits. Every other head (mean, max,
[CLS] without the pooler, weighted layers, concatenated [CLS], a hidden layer, custom heads) has no Hugging Face
class, and needs ``bertft.load`` or the ONNX file.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from bertft.adapters import merge_adapters
from bertft.deploy.inference import FORMAT_VERSION, HEAD_WEIGHTS, MANIFEST, EncoderWithHead, read_checkpoint, sha256
from bertft.deploy.onnx_backend import ONNX_INT8_FILE, quantize_int8, require_onnxruntime
from bertft.encoder import resolve_encoder
from bertft.heads import PoolerHead
from bertft.model import FineTuner
from bertft.version import __version__

#: Model types whose ``...ForSequenceClassification`` is pooler -> dropout -> ``classifier`` linear, so a
#: :class:`~bertft.heads.PoolerHead` maps onto it weight for weight.
HF_POOLER_CLASSIFIERS = frozenset({"bert"})

#: Hugging Face's ``problem_type`` for each bertft task (it picks the loss when training continues in transformers).
PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "multilabel": "multi_label_classification",
    "regression": "regression",
}

ONNX_FILE = "model.onnx"
ADAPTER_DIR = "adapter"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def hf_sequence_classifier(model: FineTuner) -> PreTrainedModel | None:
    """The model as a Hugging Face ``...ForSequenceClassification`` sharing its weights, or ``None`` if no class fits.

    Only a plain :class:`~bertft.heads.PoolerHead` (no hidden layer, not a subclass, which may pool differently) on
    an encoder type in :data:`HF_POOLER_CLASSIFIERS` fits.
    """
    head, encoder = model.head, model.encoder
    if type(head) is not PoolerHead or head.hidden_dim is not None:
        return None
    if encoder.config.model_type not in HF_POOLER_CLASSIFIERS:
        return None
    config = copy.deepcopy(encoder.config)
    cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    names = model.label_names or ["LABEL_0"]
    config.architectures = [cls.__name__]
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = PROBLEM_TYPES[model.task]
    config.classifier_dropout = head.dropout
    with torch.device("meta"):  # every module is replaced below: skip initialising weights that are thrown away
        hf = cls(config)
    setattr(hf, hf.base_model_prefix, encoder)
    linear = head.classifier.net[-1]
    assert isinstance(linear, nn.Linear), "without hidden_dim the classifier is dropout then one linear layer"
    hf.classifier = linear
    return hf


def export_onnx(
    model: EncoderWithHead, tokenizer: PreTrainedTokenizerBase, path: str | Path, opset_version: int = 17
) -> Path:
    """Writes encoder + head as one ONNX graph from token ids to logits, with dynamic batch and sequence axes.

    Inputs are ``input_ids``, ``attention_mask`` and, where the encoder takes them, ``token_type_ids`` (int64); the
    output is ``logits``, float32 ``(batch, num_outputs)``. Uses the TorchScript exporter (``dynamo=False``): it
    needs only the ``onnx`` package (the newer exporter also needs ``onnxscript``) and traces BERT-family encoders
    faithfully.

    Args:
        model: Encoder and head, in float32.
        tokenizer: Makes the example inputs that are traced.
        path: The ``.onnx`` file to write.
        opset_version: ONNX opset.

    Raises:
        ImportError: The ``onnx`` package, which the exporter needs, is not installed.
    """
    _require_onnx()
    path = Path(path)
    model = model.eval()
    # Two texts of different lengths, so the traced graph sees padding and a real attention mask.
    # token_type_ids asked for: pairs carry them (bertft.data.encode), so encoders that read them get the input.
    example = tokenizer(
        ["an example", "a longer example sentence to trace"],
        padding=True,
        return_token_type_ids=True,
        return_tensors="pt",
    )
    names = [k for k in _INPUTS if k in example and (k != "token_type_ids" or k in model.accepted)]
    args = tuple(example[k] for k in names)
    with torch.no_grad():
        per_token = model(*args).dim() == 3
    axes: dict[str, dict[int, str]] = {k: {0: "batch", 1: "sequence"} for k in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation, and tracing warns about Python branches in transformers'
        # mask code; the exported graph is checked against PyTorch in tests/test_export.py.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The attention-mask gather indexes with non-negative aranges only, the case this warning says is exact.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset_version,
            dynamo=False,
        )
    return path


def _require_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install 'bertft[onnx]' (or: pip install onnx)")


def _check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output_dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--output_dir {out} is not empty; choose another folder or pass --overwrite")


def _write_folder(
    model: FineTuner,
    tokenizer_name: str,
    max_length: int | None,
    folder: Path,
    onnx: bool,
    quantize: str | None = None,
    adapter: bool = False,
) -> None:
    peft = model.hparams.get("peft")
    if adapter:
        if peft is None:
            raise ValueError("--adapter: this checkpoint has no adapters (it was trained without model.peft)")
        # peft's own format (adapter_config.json, adapter_model.safetensors), for PeftModel.from_pretrained(base, ...)
        model.encoder.save_pretrained(folder / ADAPTER_DIR)
    model.encoder = merge_adapters(model.encoder)
    head = model.head
    hf = hf_sequence_classifier(model)
    (hf if hf is not None else model.encoder).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(tokenizer_name))
    tokenizer.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, folder / HEAD_WEIGHTS)
    if onnx:
        export_onnx(EncoderWithHead(model.encoder, head), tokenizer, folder / ONNX_FILE)
    if quantize == "int8":
        quantize_int8(folder / ONNX_FILE, folder / ONNX_INT8_FILE)
    manifest: dict[str, Any] = {
        "format": "bertft",
        "format_version": FORMAT_VERSION,
        "bertft_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "encoder": model.hparams["encoder"],
        "head": head.config,
        "task": model.task,
        "num_labels": model.hparams["num_labels"],
        "label_names": model.label_names,
        "threshold": model.threshold,
        "max_length": max_length,
        "hf_sequence_classification": hf is not None,
        "onnx": ONNX_FILE if onnx else None,
        "onnx_int8": ONNX_INT8_FILE if quantize == "int8" else None,
        "peft": peft,  # the adapters' settings, merged into the encoder's weights here
        # Every file but this one, so an altered or swapped file is caught before it is loaded.
        "files": {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()},
    }
    # Written last: a folder without bertft.json is never taken for a complete export.
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def export(
    ckpt_path: str | Path,
    output_dir: str | Path,
    *,
    onnx: bool = False,
    quantize: str | None = None,
    overwrite: bool = False,
    adapter: bool = False,
) -> Path:
    """Exports a checkpoint to a self-contained folder that :func:`bertft.load` reads (see the module docstring).

    The folder is built next to ``output_dir`` under a hidden name and renamed into place at the end, so a killed
    export leaves no half-written folder that looks complete.

    Args:
        ckpt_path: A Lightning checkpoint of :class:`~bertft.model.FineTuner`.
        output_dir: Folder to create; it must not exist or be empty, unless ``overwrite``.
        onnx: Also write ``model.onnx`` (encoder + head).
        quantize: ``"int8"``: also write ``model.int8.onnx``, ONNX Runtime's dynamic int8 quantization of it (needs
            ``onnx``); ``bertft.load(folder, backend="onnx-int8")`` runs it.
        overwrite: Replace a non-empty ``output_dir``.
        adapter: Also write a LoRA checkpoint's adapter in peft's own format under ``adapter/``.

    Returns:
        The folder.

    Raises:
        FileNotFoundError: No checkpoint at ``ckpt_path``.
        FileExistsError: ``output_dir`` is a file, or a non-empty folder without ``overwrite``.
        ImportError: ``onnx`` without the ``onnx`` package installed (``quantize``: or without onnxruntime).
        ValueError: ``quantize`` without ``onnx``, or not ``"int8"``.
    """
    if quantize is not None and quantize != "int8":
        raise ValueError(f"quantize={quantize!r}: only 'int8' is supported")
    if quantize and not onnx:
        raise ValueError("--quantize int8 quantizes the ONNX graph: pass --onnx as well")
    out = Path(output_dir).absolute()
    _check_output_dir(out, overwrite)
    if onnx:
        _require_onnx()  # before the slow part
    if quantize:
        require_onnxruntime()
    model, tokenizer_name, max_length = read_checkpoint(ckpt_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = out.parent / f".{out.name}.partial-{tag}"
    staging.mkdir()
    old = out.parent / f".{out.name}.old-{tag}"
    try:
        _write_folder(model, tokenizer_name, max_length, staging, onnx, quantize, adapter)
        _check_output_dir(out, overwrite)  # again: something may have written there meanwhile
        if out.exists():
            out.rename(old)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out.exists():  # put the previous export back
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m bertft export`` (the documentation's commands are checked against it)."""
    parser = argparse.ArgumentParser(
        prog="bertft export",
        description="Export a fine-tuned checkpoint to a folder that bertft.load() and, for a PoolerHead on BERT, "
        "transformers' AutoModelForSequenceClassification read; optionally to ONNX.",
    )
    parser.add_argument("--ckpt_path", required=True, help="Lightning checkpoint (.ckpt) written by `bertft fit`.")
    parser.add_argument("--output_dir", required=True, help="Folder to create (must not exist or be empty).")
    parser.add_argument("--onnx", action="store_true", help="Also write model.onnx (encoder + head).")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="With --onnx: also write model.int8.onnx, ONNX Runtime's dynamic int8 quantization (faster on CPUs; "
        "serve it with `bertft serve FOLDER --backend onnx-int8`).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir.")
    parser.add_argument(
        "--adapter",
        action="store_true",
        help="Also write a LoRA checkpoint's adapter in peft's own format under adapter/ (the folder's encoder has "
        "the adapters merged in either way).",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m bertft export``: exports a checkpoint; exits with status 2 on a user error.

    Args:
        argv: Arguments instead of ``sys.argv[1:]``.
    """
    args = build_parser().parse_args(argv)
    try:
        folder = export(
            args.ckpt_path,
            args.output_dir,
            onnx=args.onnx,
            quantize=args.quantize,
            overwrite=args.overwrite,
            adapter=args.adapter,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:
        if os.environ.get("BERTFT_DEBUG"):
            raise
        sys.stderr.write(f"bertft export: error: {err}\n")
        sys.exit(2)
    print(f"exported to {folder}")


if __name__ == "__main__":
    main()
