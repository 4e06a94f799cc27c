"""The machinery around ``fit``: what a run needs besides the model and the data.

The command line's LightningCLI (:mod:`~bertft.training.lightning_cli`), checks before a run writes anything
(:mod:`~bertft.training.checks`), checkpoints and faults (:mod:`~bertft.training.faults`), freezing and early
stopping (:mod:`~bertft.training.freezing`, :mod:`~bertft.training.stopping`), prediction files
(:mod:`~bertft.training.prediction`), experiment tracking (:mod:`~bertft.training.tracking`,
:mod:`~bertft.training.dashboards`, :mod:`~bertft.training.loggers`), the console (:mod:`~bertft.training.console`),
distributed helpers (:mod:`~bertft.training.distributed`) and the host's memory and precision
(:mod:`~bertft.training.allocator`, :mod:`~bertft.training.precision`).

It may import the model (``bertft.model`` and below) and ``bertft.data``; nothing below it imports it back.
"""
