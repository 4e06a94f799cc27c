"""bertft: fine-tune BERT-family encoders with PyTorch Lightning and pluggable heads.

The package, by role (docs/guides/development.md, "Layout"): the model a researcher reads at the top
(:mod:`~bertft.encoder`, :mod:`~bertft.heads`, :mod:`~bertft.model`, :mod:`~bertft.tasks`, :mod:`~bertft.optim`,
:mod:`~bertft.ner`); :mod:`bertft.data` (files to batches); :mod:`bertft.training` (the machinery around ``fit``);
:mod:`bertft.deploy` (what uses a trained model: export, inference); :mod:`bertft.sweep` (many runs over seeds); and
:mod:`bertft.cli`, which dispatches the commands.
"""

from bertft import _moved
from bertft.deploy.inference import Predictor, load
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
from bertft.model import FineTuner
from bertft.version import __version__

_moved.install()  # bertft.loggers, bertft.inference, ... (the paths before bertft.training/deploy) still import

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
