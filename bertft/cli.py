"""The command line, ``bertft`` / ``python -m bertft``: one dispatch to the module that runs each command.

``fit``, ``validate``, ``test`` and ``predict`` run on LightningCLI (:mod:`bertft.training.lightning_cli`),
``export`` writes a deployable folder (:mod:`bertft.deploy.export`), ``serve`` serves one over HTTP
(:mod:`bertft.deploy.serve`), ``sweep`` runs many fits over seeds
(:mod:`bertft.sweep.command`). This module sits above all three and none of them imports it.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import ArgsType

from bertft.training import console, lightning_cli
from bertft.training.lightning_cli import BertftCLI

__all__ = ["BertftCLI", "main"]


def main(args: ArgsType = None, run: bool = True) -> BertftCLI | None:
    """Runs the command line: ``fit``/``validate``/``test``/``predict`` (LightningCLI), ``export``/``serve``/``sweep``.

    Args:
        args: Arguments instead of ``sys.argv[1:]`` (a list, or a dict), for tests and notebooks.
        run: Run the subcommand; ``False`` only parses and instantiates.

    Returns:
        The LightningCLI of ``fit`` / ``validate`` / ``test`` / ``predict``; ``None`` for the other commands.
    """
    argv = sys.argv[1:] if args is None else args
    command = argv[0] if isinstance(argv, list) and argv else None
    if command == "export":
        from bertft.deploy.export import main as export_main  # imported on use: ONNX and friends load only here

        with console.quieted():
            export_main(argv[1:])
        return None
    if command == "serve":
        from bertft.deploy.serve import main as serve_main  # LitServe and FastAPI load only here

        serve_main(argv[1:])
        return None
    if command == "sweep":
        from bertft.sweep.command import main as sweep_main

        with console.quieted():
            sweep_main(argv[1:])
        return None
    return lightning_cli.main(args, run)
