"""The head API: the public extension point of bertft.

A head turns the encoder's outputs into logits in two steps: :meth:`Head.pool` reduces the encoder's outputs to one
vector per sequence (or per token), and a shared classifier (dropout, optional hidden layer, output projection) maps
that vector to logits. A research head overrides ``pool`` and, when its reduction has parameters of its own,
``build_pooling``. Sizes such as ``hidden_size`` and the number of layers come from the encoder, never from YAML.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor, nn

from bertft.encoder import EncoderOutput


class Classifier(nn.Module):
    """Dropout, an optional hidden layer with tanh (as in BERT's own pooler and RoBERTa's head), and the output layer.

    Args:
        input_dim: Width of the pooled vector.
        num_outputs: Number of logits (labels; 1 for regression).
        dropout: Dropout probability before each linear layer.
        hidden_dim: Width of the optional hidden layer; ``None`` for a single linear layer.
    """

    def __init__(self, input_dim: int, num_outputs: int, dropout: float = 0.1, hidden_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_dim is not None:
            layers += [nn.Linear(input_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout)]
            input_dim = hidden_dim
        layers.append(nn.Linear(input_dim, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, pooled: Tensor) -> Tensor:
        """``(..., input_dim)`` to ``(..., num_outputs)``."""
        return self.net(pooled)


class Head(nn.Module, ABC):
    """Base class of every head: override :meth:`pool` to choose what the classifier sees.

    A subclass states which encoder outputs it reads with the class attributes below, so the encoder computes only
    those (``hidden_states`` of every layer cost memory; the pooler must not be built when nothing reads it). Its
    ``__init__`` arguments are its configuration: the model stores them (see :attr:`config`) and a YAML config can set
    them under ``init_args``.

    Example:
        >>> class LastFourMean(Head):
        ...     needs_hidden_states = True
        ...
        ...     def pool(self, outputs, attention_mask):
        ...         last_four = torch.stack(outputs.hidden_states[-4:]).mean(dim=0)
        ...         return masked_mean(last_four, attention_mask)

    Args:
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier (``None``: a single linear layer).
    """

    #: Read ``pooler_output`` ([CLS] through the pre-trained dense + tanh); the encoder must have a trained pooler.
    needs_pooler_output: ClassVar[bool] = False
    #: Read ``hidden_states`` (embeddings + every layer).
    needs_hidden_states: ClassVar[bool] = False
    #: Read ``attentions``; the encoder is then loaded with eager attention.
    needs_attentions: ClassVar[bool] = False

    hidden_size: int
    num_layers: int
    num_attention_heads: int | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Head:
        """Creates the head and records its constructor arguments (see :attr:`config`)."""
        # Record the arguments of the outermost __init__ call: they are the head's configuration, saved in checkpoints
        # and exports. Doing it here spares every subclass from storing its own arguments.
        self = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init_args: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                init_args.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                init_args[name] = value
        object.__setattr__(self, "_init_args", init_args)
        return self

    def __init__(self, dropout: float = 0.1, hidden_dim: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.dropout = dropout
        self.hidden_dim = hidden_dim
        self.classifier: Classifier | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The head as ``{"class_path": ..., "init_args": {...}}``: what a YAML config or a checkpoint holds."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}

    def build(
        self, hidden_size: int, num_layers: int, num_outputs: int, num_attention_heads: int | None = None
    ) -> None:
        """Sizes the head for an encoder; the model calls this once, before training.

        Args:
            hidden_size: The encoder's ``hidden_size``.
            num_layers: The encoder's ``num_hidden_layers``.
            num_outputs: Number of logits.
            num_attention_heads: The encoder's ``num_attention_heads`` (attention maps have this many per layer);
                ``None`` where unknown, for heads that do not read the maps.
        """
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.build_pooling()
        self.classifier = Classifier(self.output_dim, num_outputs, self.dropout, self.hidden_dim)

    def build_pooling(self) -> None:
        """Creates the reduction's own parameters, if it has any (``hidden_size``, ``num_layers`` and more are set)."""

    @property
    def output_dim(self) -> int:
        """Width of what :meth:`pool` returns; override when it is not ``hidden_size``."""
        return self.hidden_size

    @abstractmethod
    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Reduces the encoder's outputs to what the classifier sees.

        Args:
            outputs: The encoder's outputs; the fields this head declared it needs are set.
            attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.

        Returns:
            ``(batch, output_dim)`` for sequence tasks, or ``(batch, seq, output_dim)`` for token tasks.
        """

    def forward(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns logits: ``(batch, num_outputs)``, or ``(batch, seq, num_outputs)`` from a per-token ``pool``."""
        if self.classifier is None:
            raise RuntimeError(f"{type(self).__name__} was not built: call head.build(...) or use it inside FineTuner")
        return self.classifier(self.pool(outputs, attention_mask))
