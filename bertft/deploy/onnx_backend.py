"""Running an exported ``model.onnx`` with ONNX Runtime, and its int8 dynamic quantization for CPUs.

:class:`OnnxModel` stands where :class:`~bertft.deploy.inference.EncoderWithHead` stands in a
:class:`~bertft.deploy.inference.Predictor`: it takes the same token tensors and returns float32 logits, so length
sorting, padding and the per-task answers stay in one place. ``bertft.load(folder, backend="onnx")`` builds one.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: The int8 graph ``bertft export --onnx --quantize int8`` writes next to ``model.onnx``.
ONNX_INT8_FILE = "model.int8.onnx"
#: What ``bertft.load`` and ``bertft serve`` accept as ``backend``.
BACKENDS = ("torch", "onnx", "onnx-int8")


def require_onnxruntime() -> None:
    """Raises a clear ImportError when ONNX Runtime is missing."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ImportError("the ONNX backends need onnxruntime: pip install 'bertft[onnx]'")


def quantize_int8(source: str | Path, target: str | Path) -> Path:
    """Writes an int8 copy of an ONNX graph by ONNX Runtime's dynamic quantization.

    Weights are int8, activations are quantized on the fly per batch: the usual recipe for transformer encoders on
    CPUs, and it needs no calibration data.

    Args:
        source: The float32 ``model.onnx``.
        target: The file to write.
    """
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The MatMuls of the attention and feed-forward layers are where an encoder spends its time; per_channel scales
    # (one per output column) keep the accuracy loss small at no cost in speed.
    # ONNX Runtime logs a root-logger warning suggesting shape-inference pre-processing on every call; the exported
    # graph already carries its shapes, and tests/test_serve_backends.py checks int8 against fp32.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(previous)
    return Path(target)


class OnnxModel(torch.nn.Module):
    """An ONNX graph from token ids to logits, called like :class:`~bertft.deploy.inference.EncoderWithHead`.

    Runs on the CPU with ONNX Runtime; inputs the graph does not take (``token_type_ids`` of an encoder without
    them) are dropped, and ``token_type_ids`` the graph takes but the caller did not give are zeros.

    Args:
        path: The ``.onnx`` file.
        max_position_embeddings: The encoder's position limit (``config.json``), for the predictor's default length.
        threads: ONNX Runtime's intra-op threads; 0 lets it choose (one per core).
    """

    def __init__(self, path: str | Path, max_position_embeddings: int, threads: int = 0) -> None:
        super().__init__()
        require_onnxruntime()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's threads busy-wait after each run by default. Measured on 2 cores with the int8 MiniLM: one
        # text every 5 ms took the same time per run either way but twice the CPU, and in `bertft serve` that CPU is
        # what the HTTP process and tokenisation need (served int8 fell below the fp32 torch backend's throughput).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.max_position_embeddings = max_position_embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Returns float32 logits, ``(batch, num_outputs)`` (or ``(batch, sequence, num_labels)`` per token)."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {}
        for name in self.input_names:
            value = given.get(name)
            if value is None:  # only token_type_ids can be missing: one segment
                value = torch.zeros_like(input_ids)
            feed[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        (logits,) = self.session.run(["logits"], feed)
        return torch.from_numpy(logits)
