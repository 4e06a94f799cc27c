"""Building blocks the heads share: padding-aware reductions, layer selection and the scalar mix."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Averages the hidden states of real tokens, ignoring padding.

    Computed in float32 so that bf16/fp16 autocast does not lose precision summing hundreds of tokens.

    Args:
        hidden: ``(batch, seq, hidden)``.
        attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.

    Returns:
        ``(batch, hidden)`` in float32. A row that is all padding gives zeros, not NaN.
    """
    mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)  # (B, H)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1); clamp: an all-padding row must not divide by zero
    return summed / count


def masked_max(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Takes the element-wise maximum over real tokens, ignoring padding.

    Padding is replaced out of place by float32's lowest value (never an in-place ``-1e9``, which overflows fp16 and
    would also corrupt the encoder's output tensor that autograd still needs).

    Args:
        hidden: ``(batch, seq, hidden)``.
        attention_mask: ``(batch, seq)``, 1 for real tokens.

    Returns:
        ``(batch, hidden)`` in float32. A row that is all padding gives zeros.
    """
    hidden = hidden.to(torch.float32)
    real = attention_mask.bool().unsqueeze(-1)  # (B, T, 1)
    lowest = torch.finfo(torch.float32).min
    maxed = hidden.masked_fill(~real, lowest).amax(dim=1)  # (B, H)
    has_tokens = real.any(dim=1)  # (B, 1)
    return torch.where(has_tokens, maxed, torch.zeros_like(maxed))


def masked_softmax(scores: Tensor, attention_mask: Tensor) -> Tensor:
    """Softmax over the sequence that gives padding exactly zero weight.

    Args:
        scores: ``(batch, seq)`` scores, any dtype.
        attention_mask: ``(batch, seq)``, 1 for real tokens.

    Returns:
        ``(batch, seq)`` float32 weights summing to 1 over real tokens. A row that is all padding gives zeros, not NaN
        (a softmax over only ``-inf`` would).
    """
    real = attention_mask.bool()
    scores = scores.to(torch.float32).masked_fill(~real, torch.finfo(torch.float32).min)
    weights = torch.softmax(scores, dim=-1) * real  # the product zeroes an all-padding row's uniform weights
    return weights


def weighted_sum(hidden: Tensor, weights: Tensor) -> Tensor:
    """``sum_t weights[b, t] * hidden[b, t]``: ``(batch, seq, hidden)`` and ``(batch, seq)`` to ``(batch, hidden)``.

    Computed in float32, as :func:`masked_mean`.
    """
    return torch.einsum("bt,bth->bh", weights.to(torch.float32), hidden.to(torch.float32))


def hidden_state_index(num_layers: int, index: int, name: str = "layer") -> int:
    """Resolves a position in ``hidden_states`` (0 = embeddings, ``k`` = layer ``k``; negative counts from the end).

    Args:
        num_layers: ``config.num_hidden_layers``; ``hidden_states`` has ``num_layers + 1`` entries.
        index: The position as a config gives it: ``-1`` is the last layer, ``1`` the first transformer layer.
        name: The argument's name, for the error.

    Raises:
        ValueError: ``index`` is outside ``-(num_layers + 1) .. num_layers``.
    """
    if not -(num_layers + 1) <= index <= num_layers:
        raise ValueError(
            f"{name}={index} is not a layer of this encoder: hidden_states has {num_layers + 1} entries "
            f"(0 = embeddings, 1..{num_layers} = layers; negative counts from the end, -1 = the last layer)"
        )
    return index % (num_layers + 1)


def layer_indices(num_layers: int, last_k: int | None = None, include_embeddings: bool = True) -> list[int]:
    """Positions in ``hidden_states`` that a head mixes or concatenates: the one definition of "layer".

    ``hidden_states`` has ``num_layers + 1`` entries: index 0 is the embedding output, index ``k`` is the output of
    transformer layer ``k`` (1-based), so the last layer is ``num_layers``. "The last k layers" are the transformer
    layers ``num_layers - k + 1 .. num_layers``; the embeddings are never one of them.

    Args:
        num_layers: ``config.num_hidden_layers``.
        last_k: Keep only the last ``k`` transformer layers; ``None`` keeps all of them.
        include_embeddings: Also keep the embedding output (index 0). Only allowed when ``last_k`` is ``None``.

    Returns:
        Increasing indices into ``hidden_states``.
    """
    if last_k is None:
        first = 1
    else:
        if not 1 <= last_k <= num_layers:
            raise ValueError(f"last_k={last_k} is outside 1..{num_layers}, the encoder's number of layers")
        if include_embeddings:
            raise ValueError(
                "include_embeddings=True cannot be combined with last_k: the embeddings are not one of the last "
                "layers. Set include_embeddings: false, or last_k: null to mix every layer."
            )
        first = num_layers - last_k + 1
    return ([0] if include_embeddings else []) + list(range(first, num_layers + 1))


class ScalarMix(nn.Module):
    """A learned, softmax-normalised weighted sum of layers times a learned scale (ELMo; allennlp's ``ScalarMix``).

    ``mix = gamma * sum_k softmax(w)_k * layer_k``. With ``w = 0`` at start every layer weighs the same.
    The optimiser gives these parameters their own group (no weight decay, their own learning rate), which it finds by
    this module's type.

    Args:
        num_mixed: Number of layers mixed.
    """

    def __init__(self, num_mixed: int) -> None:
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_mixed))
        self.gamma = nn.Parameter(torch.ones(()))

    @property
    def weights(self) -> Tensor:
        """The normalised layer weights, ``(num_mixed,)``, summing to 1."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, layers: list[Tensor]) -> Tensor:
        """Mixes ``num_mixed`` tensors of the same shape into one of that shape."""
        if len(layers) != self.layer_logits.numel():
            raise ValueError(f"ScalarMix built for {self.layer_logits.numel()} layers was given {len(layers)}")
        stacked = torch.stack(layers, dim=0)  # (K, B, T, H)
        weights = self.weights.to(stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))  # (K, 1, 1, 1)
        return self.gamma.to(stacked.dtype) * (weights * stacked).sum(dim=0)  # (B, T, H)
