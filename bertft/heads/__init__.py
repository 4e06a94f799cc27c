"""Heads: what turns the encoder's outputs into logits. Subclass :class:`Head` to write your own."""

from bertft.heads.attention import AttentionMapHead, AttentionPoolingHead
from bertft.heads.base import Classifier, Head
from bertft.heads.builtin import (
    CLSHead,
    ConcatCLSHead,
    FirstLastMeanHead,
    MaxHead,
    MeanHead,
    MeanMaxHead,
    PoolerHead,
    TokenHead,
    WeightedLayersHead,
)
from bertft.heads.reduce import (
    ScalarMix,
    hidden_state_index,
    layer_indices,
    masked_max,
    masked_mean,
    masked_softmax,
    weighted_sum,
)

__all__ = [
    "AttentionMapHead",
    "AttentionPoolingHead",
    "CLSHead",
    "Classifier",
    "ConcatCLSHead",
    "FirstLastMeanHead",
    "Head",
    "MaxHead",
    "MeanHead",
    "MeanMaxHead",
    "PoolerHead",
    "ScalarMix",
    "TokenHead",
    "WeightedLayersHead",
    "hidden_state_index",
    "layer_indices",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "weighted_sum",
]
