"""What multi-device training needs beyond Lightning's own engine: FSDP's wrapping policy and a clean exit."""

from __future__ import annotations

import torch.distributed as dist
from torch import nn


def wrap_encoder_layers(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: one FSDP unit per transformer layer of the encoder, whatever its class.

    :class:`~bertft.FineTuner` tags the encoder's layers (BERT's ``BertLayer``, DistilBERT's ``TransformerBlock``,
    ...) when it loads them, so one policy serves every BERT-family encoder. Use it from YAML as
    ``auto_wrap_policy: bertft.distributed.wrap_encoder_layers``. An encoder whose layers share one set of weights
    (ALBERT) gets no per-layer units: its shared layer stays in the root unit, gathered once per step rather than
    once for each of the layers that run it.

    Args:
        module: The module FSDP considers.
        recurse: Whether FSDP asks if it should descend into ``module`` (always yes).
        nonwrapped_numel: Parameters not yet wrapped under ``module`` (unused: layers are the unit, not a size).
    """
    if recurse:
        return True
    return bool(getattr(module, "bertft_encoder_layer", False))


def destroy_process_group() -> None:
    """Tears the process group down at the end of a run.

    Under ``torchrun`` a process that exits with the group alive aborts with "terminate called without an active
    exception" after training finished; Lightning's own launcher cleans up, torchrun's does not.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
