"""My project's heads. bertft finds them by ``class_path`` (``my_heads.AttentionPoolingHead``) when this folder is on
``PYTHONPATH``, or when they live in an installed package."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bertft import EncoderOutput
from bertft.heads import Head


class AttentionPoolingHead(Head):
    """A weighted mean of the last layer's tokens, the weights given by learned queries.

    Args:
        num_queries: Number of learned queries; each pools its own vector and they are concatenated.
        dropout: Dropout probability in the classifier.
        hidden_dim: Width of an optional hidden layer in the classifier.
    """

    def __init__(self, num_queries: int = 1, dropout: float = 0.1, hidden_dim: int | None = None) -> None:
        super().__init__(dropout=dropout, hidden_dim=hidden_dim)
        if num_queries < 1:
            raise ValueError(f"num_queries={num_queries} must be at least 1")
        self.num_queries = num_queries

    def build_pooling(self) -> None:
        """Creates the queries; the encoder has set ``self.hidden_size`` by now."""
        self.query = nn.Parameter(torch.randn(self.num_queries, self.hidden_size) * 0.02)  # near 0: starts as a mean

    @property
    def output_dim(self) -> int:
        """One ``hidden_size`` vector per query."""
        return self.num_queries * self.hidden_size

    def token_weights(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Each query's weights over the tokens, ``(batch, num_queries, seq)``; padding gets exactly 0."""
        scores = torch.einsum("bth,qh->bqt", hidden.float(), self.query.float()) / math.sqrt(self.hidden_size)
        padding = attention_mask[:, None, :] == 0  # (B, 1, T)
        scores = scores.masked_fill(padding, torch.finfo(torch.float32).min)  # out of place: autograd needs hidden
        return scores.softmax(dim=-1)  # (B, Q, T)

    def pool(self, outputs: EncoderOutput, attention_mask: Tensor) -> Tensor:
        """Returns ``(batch, num_queries * hidden)``."""
        hidden = outputs.last_hidden_state  # (B, T, H)
        weights = self.token_weights(hidden, attention_mask)  # (B, Q, T)
        pooled = torch.einsum("bqt,bth->bqh", weights, hidden.float())  # (B, Q, H)
        return pooled.flatten(1)  # (B, Q*H)
