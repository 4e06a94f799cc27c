"""The built-in heads, one small class per way of reducing the encoder's outputs."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from bertft.encoder import EncoderOutput
from bertft.heads.base import Head
from bertft.heads.reduce import ScalarMix, hidden_state_index, layer_indices, masked_max, masked_mean


class PoolerHead(Head):
    """Reads ``pooler_output``: [CLS] through BERT's pre-trained dense + tanh (trained by next-sentence prediction).

    Needs an encoder with trained pooler weights (BERT, MiniLM); DistilBERT and ELECTRA have none.
    """

    needs_pooler_output = True

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``pooler_output``, ``(batch, hidden)``."""
        if outputs.pooler_output is None:
            raise ValueError("PoolerHead needs `pooler_output`, but the encoder returned none")
        return outputs.pooler_output


class CLSHead(Head):
    """Reads the [CLS] (first) token of ``last_hidden_state``, without the pre-trained pooler."""

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``."""
        return outputs.last_hidden_state[:, 0]  # (B, H)


class MeanHead(Head):
    """Averages ``last_hidden_state`` over real tokens (padding never changes the result)."""

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``."""
        return masked_mean(outputs.last_hidden_state, attention_mask)


class MaxHead(Head):
    """Element-wise maximum of ``last_hidden_state`` over real tokens."""

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``."""
        return masked_max(outputs.last_hidden_state, attention_mask)


class MeanMaxHead(Head):
    """The mean and the element-wise maximum of ``last_hidden_state`` over real tokens, concatenated.

    Two views of the same tokens: the mean keeps what they share, the max what stands out in any one of them
    (InferSent, Conneau et al. 2017, found max pooling best for its BiLSTM; sentence-transformers offers both at once).
    """

    @property
    def output_dim(self) -> int:
        """``2 * hidden_size``."""
        return 2 * self.hidden_size

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, 2 * hidden)``: mean first, then max."""
        hidden = outputs.last_hidden_state
        return torch.cat([masked_mean(hidden, attention_mask), masked_max(hidden, attention_mask)], dim=-1)


class FirstLastMeanHead(Head):
    """Mean over real tokens of the average of two layers, by default the first transformer layer and the last.

    "first-last-avg" of Su et al. (2021), "Whitening Sentence Representations for Better Semantics and Faster
    Retrieval", which found it a better sentence vector than the last layer alone for BERT. Layers are positions in
    ``hidden_states``: 0 is the embedding output (SimCSE's code averages that one with the last), 1 the first
    transformer layer, -1 the last.

    Args:
        first: One layer of the pair (default 1, the first transformer layer).
        last: The other (default -1, the last layer).
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier.
    """

    needs_hidden_states = True

    def __init__(self, first: int = 1, last: int = -1, dropout: float = 0.1, hidden_dim: int | None = None) -> None:
        super().__init__(dropout=dropout, hidden_dim=hidden_dim)
        self.first = first
        self.last = last

    def build_pooling(self) -> None:
        """Checks both layers against the encoder's depth."""
        self.pair = (
            hidden_state_index(self.num_layers, self.first, "first"),
            hidden_state_index(self.num_layers, self.last, "last"),
        )

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``."""
        assert outputs.hidden_states is not None, "the model asks for hidden_states when needs_hidden_states is set"
        first, last = (outputs.hidden_states[i] for i in self.pair)
        return masked_mean((first.to(torch.float32) + last.to(torch.float32)) / 2, attention_mask)


class TokenHead(Head):
    """One vector per token from ``last_hidden_state``, for token classification (NER)."""

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, seq, hidden)``."""
        return outputs.last_hidden_state


class WeightedLayersHead(Head):
    """A learned weighted sum of ``hidden_states`` (scalar mix), then reduced over the sequence.

    ``softmax(w) · layers * gamma`` with ``w`` and ``gamma`` learned (ELMo; the BERT paper's feature-based NER, which
    found a weighted sum of layers beats the last layer alone when the encoder is frozen).

    Args:
        last_k: Mix only the last ``k`` transformer layers; ``None`` mixes every layer.
        include_embeddings: Also mix the embedding output (``hidden_states[0]``); only with ``last_k: null``.
        reduce: ``mean`` (masked mean over tokens), ``cls`` (first token) or ``none`` (one vector per token, for
            token classification).
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier.
    """

    needs_hidden_states = True

    def __init__(
        self,
        last_k: int | None = None,
        include_embeddings: bool = True,
        reduce: Literal["mean", "cls", "none"] = "mean",
        dropout: float = 0.1,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__(dropout=dropout, hidden_dim=hidden_dim)
        if reduce not in ("mean", "cls", "none"):
            raise ValueError(f"reduce={reduce!r}: choose 'mean', 'cls' or 'none'")
        self.last_k = last_k
        self.include_embeddings = include_embeddings
        self.reduce = reduce

    def build_pooling(self) -> None:
        """Creates one mixing weight per selected layer."""
        self.layers = layer_indices(self.num_layers, self.last_k, self.include_embeddings)
        self.mix = ScalarMix(len(self.layers))

    @property
    def layer_weights(self) -> list[float]:
        """The normalised weight of each mixed layer, in the order of :attr:`layers` (0 = embeddings)."""
        return self.mix.weights.detach().cpu().tolist()

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, hidden)``, or ``(batch, seq, hidden)`` with ``reduce="none"``."""
        assert outputs.hidden_states is not None, "the model asks for hidden_states when needs_hidden_states is set"
        mixed = self.mix([outputs.hidden_states[i] for i in self.layers])  # (B, T, H)
        if self.reduce == "mean":
            return masked_mean(mixed, attention_mask)
        if self.reduce == "cls":
            return mixed[:, 0]
        return mixed


class ConcatCLSHead(Head):
    """Concatenates the [CLS] vectors of the last ``k`` layers (the BERT paper's best feature-based NER variant).

    Args:
        last_k: Number of last transformer layers to concatenate.
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier.
    """

    needs_hidden_states = True

    def __init__(self, last_k: int = 4, dropout: float = 0.1, hidden_dim: int | None = None) -> None:
        super().__init__(dropout=dropout, hidden_dim=hidden_dim)
        self.last_k = last_k

    def build_pooling(self) -> None:
        """Checks that the encoder has ``last_k`` layers."""
        self.layers = layer_indices(self.num_layers, self.last_k, include_embeddings=False)

    @property
    def output_dim(self) -> int:
        """``last_k * hidden_size``."""
        return self.last_k * self.hidden_size

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, last_k * hidden)``."""
        assert outputs.hidden_states is not None, "the model asks for hidden_states when needs_hidden_states is set"
        return torch.cat([outputs.hidden_states[i][:, 0] for i in self.layers], dim=-1)  # (B, k*H)
