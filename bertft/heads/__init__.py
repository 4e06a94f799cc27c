"""Heads: what turns the encoder's outputs into logits. Subclass :class:`Head` to write your own."""

from bertft.heads.base import Classifier, Head
from bertft.heads.builtin import (
    CLSHead,
    ConcatCLSHead,
    MaxHead,
    MeanHead,
    PoolerHead,
    TokenHead,
    WeightedLayersHead,
)
from bertft.heads.reduce import ScalarMix, layer_indices, masked_max, masked_mean

__all__ = [
    "CLSHead",
    "Classifier",
    "ConcatCLSHead",
    "Head",
    "MaxHead",
    "MeanHead",
    "PoolerHead",
    "ScalarMix",
    "TokenHead",
    "WeightedLayersHead",
    "layer_indices",
    "masked_max",
    "masked_mean",
]
