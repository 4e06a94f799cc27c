"""What uses a trained model: export and inference.

:mod:`~bertft.deploy.export` writes a self-contained folder (safetensors, ONNX) and :mod:`~bertft.deploy.inference`
loads one for predictions (``bertft.load``).

It may import the model, ``bertft.data`` and ``bertft.training``; none of those import it back.
"""
