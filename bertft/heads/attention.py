"""Heads that weigh tokens by attention: the encoder's own attention maps, or a learned query."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bertft.encoder import EncoderOutput
from bertft.heads.base import Head
from bertft.heads.reduce import ScalarMix, hidden_state_index, masked_softmax, weighted_sum


class AttentionMapHead(Head):
    """Reads ``attentions``: a mean of ``last_hidden_state`` weighted by the attention [CLS] pays to each token.

    For each chosen layer and attention head, row 0 of the attention map (what the [CLS] query attends to) is a
    distribution over the tokens; the head averages those rows (``mix: mean``) or learns a softmax-weighted mix of
    them (``mix: learned``, one weight per layer and head, starting even), renormalises the result over real tokens
    and pools ``last_hidden_state`` with it. The idea that [CLS]'s attention says which tokens matter is Clark et al.
    (2019), "What Does BERT Look At?"; the head has no parameters beyond the classifier with ``mix: mean``.

    Asking for attention maps loads the encoder with eager attention (``sdpa`` returns none), which is slower and holds
    every layer's ``(batch, heads, seq, seq)`` maps; the cost on this project's hardware is in BENCHMARKS.md. Other
    heads keep the efficient attention.

    Args:
        layers: The transformer layers whose maps are read, 1-based (negative counts from the end: ``[-1]`` is the
            last layer, the default).
        mix: ``mean`` over the chosen layers and heads, or ``learned`` (softmax weights trained with ``mix_lr``).
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier.
    """

    needs_attentions = True

    def __init__(
        self,
        layers: list[int] | None = None,
        mix: Literal["mean", "learned"] = "mean",
        dropout: float = 0.1,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__(dropout=dropout, hidden_dim=hidden_dim)
        if mix not in ("mean", "learned"):
            raise ValueError(f"mix={mix!r}: choose 'mean' or 'learned'")
        if layers is not None and not layers:
            raise ValueError("layers=[]: name at least one layer, e.g. [-1] for the last")
        self.layers = [-1] if layers is None else list(layers)
        self.mix_kind = mix

    def build_pooling(self) -> None:
        """Resolves the layers and, with ``mix: learned``, creates one weight per (layer, attention head)."""
        positions = {layer: hidden_state_index(self.num_layers, layer, "layers") for layer in self.layers}
        for layer, position in positions.items():
            if position == 0:  # the embeddings: no attention map
                raise ValueError(
                    f"layers: {layer} is not a transformer layer of this encoder (1..{self.num_layers}, or "
                    f"-{self.num_layers}..-1 from the end; attention maps exist for transformer layers only)"
                )
        # attentions[i] belongs to transformer layer i + 1, which is hidden_states[i + 1].
        self.map_layers = sorted({position - 1 for position in positions.values()})
        self.mix: ScalarMix | None = None
        if self.mix_kind == "learned":
            if self.num_attention_heads is None:
                raise ValueError("AttentionMapHead(mix='learned') needs the encoder's num_attention_heads to size it")
            self.mix = ScalarMix(len(self.map_layers) * self.num_attention_heads)

    def token_weights(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """How much each token counts in the pooled vector: ``(batch, seq)``, zero on padding, summing to 1."""
        if outputs.attentions is None:
            raise ValueError("AttentionMapHead needs `attentions`, but the encoder returned none (use eager attention)")
        # Row 0 of each map: the attention the [CLS] query pays to every key. (L', B, heads, T) -> (B, L' * heads, T)
        rows = torch.stack([outputs.attentions[i][:, :, 0, :] for i in self.map_layers], dim=1).to(torch.float32)
        rows = rows.flatten(1, 2)
        # A learned mix is a ScalarMix, so the optimiser gives it the mix group (mix_lr, no weight decay) as it does
        # WeightedLayersHead's; its scale gamma cancels in the renormalisation below.
        cls_attention = rows.mean(dim=1) if self.mix is None else self.mix(list(rows.unbind(dim=1)))  # (B, T)
        weights = cls_attention * attention_mask.to(torch.float32)
        # Renormalise over real tokens: a map may give padding float noise, and the mix need not sum to one.
        return weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``."""
        return weighted_sum(outputs.last_hidden_state, self.token_weights(outputs, attention_mask))


class AttentionPoolingHead(Head):
    """A learned attention pooling over ``last_hidden_state``: ``softmax_t(score(h_t)) · h`` over real tokens.

    The score is a learned query's dot product with each token (``scorer_dim: null``), or a small MLP,
    ``v · tanh(W h_t)`` (Bahdanau-style additive attention, as in Lin et al. 2017's self-attentive sentence
    embedding with one hop). The query (or ``v``) starts at zero, so the head starts as :class:`MeanHead` and learns
    which tokens to favour.

    Args:
        scorer_dim: Width of the MLP scorer's hidden layer; ``None`` for a single learned query.
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier.
    """

    def __init__(self, scorer_dim: int | None = None, dropout: float = 0.1, hidden_dim: int | None = None) -> None:
        super().__init__(dropout=dropout, hidden_dim=hidden_dim)
        if scorer_dim is not None and scorer_dim < 1:
            raise ValueError(f"scorer_dim={scorer_dim} must be a positive width, or null for a single learned query")
        self.scorer_dim = scorer_dim

    def build_pooling(self) -> None:
        """Creates the scorer: a query vector, or ``W`` and ``v``."""
        if self.scorer_dim is None:
            self.scorer: nn.Module = nn.Linear(self.hidden_size, 1, bias=False)
        else:
            self.scorer = nn.Sequential(
                nn.Linear(self.hidden_size, self.scorer_dim), nn.Tanh(), nn.Linear(self.scorer_dim, 1, bias=False)
            )
        last = self.scorer if isinstance(self.scorer, nn.Linear) else self.scorer[-1]
        nn.init.zeros_(last.weight)  # every token scores the same at first: the mean over tokens

    def token_weights(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """How much each token counts in the pooled vector: ``(batch, seq)``, zero on padding, summing to 1."""
        hidden = outputs.last_hidden_state
        scores = self.scorer(hidden.to(self.scorer_dtype)).squeeze(-1)  # (B, T)
        return masked_softmax(scores, attention_mask)

    @property
    def scorer_dtype(self) -> torch.dtype:
        """The scorer's parameter dtype (the hidden states are cast to it, as a bf16 encoder may hand float32 ones)."""
        return next(self.scorer.parameters()).dtype

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``."""
        return weighted_sum(outputs.last_hidden_state, self.token_weights(outputs, attention_mask))
