"""bertft: fine-tune BERT-family encoders with PyTorch Lightning and pluggable heads."""

from bertft.encoder import EncoderOutput, load_encoder, resolve_encoder
from bertft.heads import (
    CLSHead,
    ConcatCLSHead,
    Head,
    MaxHead,
    MeanHead,
    PoolerHead,
    TokenHead,
    WeightedLayersHead,
)
from bertft.inference import Predictor, load
from bertft.model import FineTuner

__version__ = "0.1.0"

__all__ = [
    "CLSHead",
    "ConcatCLSHead",
    "EncoderOutput",
    "FineTuner",
    "Head",
    "MaxHead",
    "MeanHead",
    "PoolerHead",
    "Predictor",
    "TokenHead",
    "WeightedLayersHead",
    "__version__",
    "load",
    "load_encoder",
    "resolve_encoder",
]
