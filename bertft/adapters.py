"""Parameter-efficient fine-tuning through ``peft``: LoRA adapters on the encoder, the head trained fully.

``model.peft`` (a :class:`PeftSettings`) wraps the loaded encoder in a ``peft.PeftModel``: the encoder's own weights
stay frozen and bit-identical, small low-rank matrices beside the chosen linear layers train, and so does the head
(any head: it sits outside the wrapped encoder). Checkpoints keep only what trains (:func:`frozen_state_keys` names
what they leave out); the base is rebuilt from ``model.encoder`` when one is loaded.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

#: The attention projections ``target_modules: auto`` adapts, per ``model_type``: the query, key and value of
#: self-attention, as the LoRA paper and peft's own table do for BERT-like models. Checked against each family's
#: module names in tests/test_peft.py; peft's table has no entry for ModernBERT, DistilBERT or MPNet.
AUTO_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "camembert": ("query", "key", "value"),
    "electra": ("query", "key", "value"),
    "albert": ("query", "key", "value"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "mpnet": ("q", "k", "v"),
    "modernbert": ("Wqkv",),  # one fused query-key-value projection
}

#: The methods bertft wires. DoRA and rsLoRA are LoRA variants (``use_dora``, ``use_rslora``).
METHODS = ("lora",)

PEFT_MISSING = (
    "model.peft needs the peft package, which is not installed: pip install 'bertft[peft]' (or: pip install peft)"
)


@dataclass
class PeftSettings:
    """LoRA on the encoder (peft's ``LoraConfig``), set under ``model.peft``.

    Attributes:
        method: ``lora`` (DoRA and rsLoRA through ``use_dora`` and ``use_rslora``).
        r: Rank of each adapter's two matrices.
        alpha: Scaling numerator: the update is ``(alpha / r) * B A`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: Dropout on each adapter's input.
        target_modules: Which linear layers get adapters: ``auto`` (the family's attention query, key and value
            projections, :data:`AUTO_TARGETS`), ``all-linear`` (every linear layer of the encoder), or a list of
            module names (the last part of the name: ``query``, ``dense``, ``Wqkv``).
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)``.
        use_dora: Weight-decomposed LoRA (DoRA): also trains a magnitude per output feature; slower per step.
        bias: Which biases train too: ``none``, ``lora_only`` (of the adapted layers) or ``all`` (every encoder bias).
        layers: Adapt only these transformer layers (0 is the bottom one); ``null`` adapts every layer.
    """

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: Literal["auto", "all-linear"] | list[str] = "auto"
    use_rslora: bool = False
    use_dora: bool = False
    bias: Literal["none", "lora_only", "all"] = "none"
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"model.peft.method={self.method!r}: bertft wires {', '.join(METHODS)} (with its variants "
                "use_dora: true and use_rslora: true); choose one of those."
            )
        if int(self.r) != self.r or self.r <= 0:
            raise ValueError(f"model.peft.r={self.r} must be a whole number of 1 or more (the adapters' rank)")
        if self.alpha <= 0:
            raise ValueError(f"model.peft.alpha={self.alpha} must be above 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.peft.dropout={self.dropout} must be in [0, 1)")
        if self.bias not in ("none", "lora_only", "all"):
            raise ValueError(f"model.peft.bias={self.bias!r}: choose 'none', 'lora_only' or 'all'")
        if isinstance(self.target_modules, str) and self.target_modules not in ("auto", "all-linear"):
            raise ValueError(
                f"model.peft.target_modules={self.target_modules!r}: give 'auto', 'all-linear' or a list of names"
            )
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("model.peft.target_modules is an empty list: name at least one linear layer, or 'auto'")

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints and configs keep them."""
        return asdict(self)


def settings_from(value: PeftSettings | dict[str, Any] | None) -> PeftSettings | None:
    """``model.peft`` as given (settings, a checkpoint's dict, or ``None``) as :class:`PeftSettings`."""
    if value is None or isinstance(value, PeftSettings):
        return value
    return PeftSettings(**value)


def linear_layer_names(encoder: nn.Module) -> list[str]:
    """The distinct last parts of the names of the encoder's linear layers (``query``, ``dense``, ``Wqkv``, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)})


def resolve_targets(encoder: nn.Module, settings: PeftSettings) -> list[str] | str:
    """The ``target_modules`` to hand to peft: ``auto`` looked up by family, names checked against the encoder.

    Raises:
        ValueError: ``auto`` on a family without an entry in :data:`AUTO_TARGETS`, or a name that is none of the
            encoder's linear layers (the message lists them, with the closest as "did you mean").
    """
    linear = linear_layer_names(encoder)
    model_type = encoder.config.model_type
    if settings.target_modules == "all-linear":
        return "all-linear"
    if settings.target_modules == "auto":
        if model_type not in AUTO_TARGETS:
            raise ValueError(
                f"model.peft.target_modules: auto has no entry for {model_type!r} encoders; name the layers to adapt "
                f"from its linear layers ({', '.join(linear)}), or use all-linear."
            )
        return list(AUTO_TARGETS[model_type])
    unknown = [name for name in settings.target_modules if name not in linear]
    if unknown:
        hints = [
            f"{name!r}: did you mean {' or '.join(repr(c) for c in close)}?"
            for name in unknown
            if (close := difflib.get_close_matches(name, linear, n=2, cutoff=0.5))
        ]
        raise ValueError(
            f"model.peft.target_modules: {', '.join(map(repr, unknown))} is not a linear layer of this {model_type} "
            f"encoder, whose linear layers are {', '.join(linear)}." + (" " + " ".join(hints) if hints else "")
        )
    return list(settings.target_modules)


def wrap_encoder(encoder: nn.Module, settings: PeftSettings, num_layers: int) -> nn.Module:
    """Freezes ``encoder`` and adds adapters to it (``peft.get_peft_model``); returns the ``PeftModel``.

    Args:
        encoder: A loaded (and adapted: gradient checkpointing, dropout) Hugging Face encoder.
        settings: What to add.
        num_layers: The encoder's number of transformer layers, to check ``layers`` against.

    Raises:
        ValueError: peft is not installed, or the settings do not fit this encoder (:func:`resolve_targets`).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ValueError(PEFT_MISSING) from err
    targets = resolve_targets(encoder, settings)
    if settings.layers is not None:
        bad = [k for k in settings.layers if not 0 <= k < num_layers]
        if bad or not settings.layers:
            raise ValueError(
                f"model.peft.layers={settings.layers}: give layer numbers from 0 to {num_layers - 1} (this encoder "
                f"has {num_layers} layers), or null for all of them"
            )
    config = LoraConfig(
        r=int(settings.r),
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        bias=settings.bias,
        layers_to_transform=settings.layers,
    )
    return get_peft_model(encoder, config)


def base_model(encoder: nn.Module) -> nn.Module:
    """The Hugging Face encoder inside a ``PeftModel``, or ``encoder`` itself when it has no adapters."""
    get = getattr(encoder, "get_base_model", None)
    return get() if callable(get) else encoder


def frozen_state_keys(module: nn.Module, prefix: str) -> set[str]:
    """The ``state_dict`` keys of ``module`` (under ``prefix``) that never train: frozen weights and buffers.

    What an adapter checkpoint leaves out, to be rebuilt from the base encoder when it is loaded.
    """
    frozen = {prefix + name for name, p in module.named_parameters() if not p.requires_grad}
    frozen |= {prefix + name for name, _ in module.named_buffers()}
    return frozen


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``module``."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_adapters(encoder: nn.Module) -> nn.Module:
    """Folds the adapters into the base weights (``merge_and_unload``) and returns the plain Hugging Face encoder.

    The result computes what the adapted encoder computed (up to float rounding) with no adapter left, so it saves,
    exports to ONNX and loads as any encoder does. ``encoder`` without adapters is returned as is.
    """
    merge = getattr(encoder, "merge_and_unload", None)
    return merge(safe_merge=True) if callable(merge) else encoder
