"""Old module paths that keep importing after the package was grouped by role (``bertft.training``, ``bertft.deploy``).

Saved ``config.yaml`` files, checkpoints' hyperparameters and users' own configs name classes by ``class_path``, e.g.
``bertft.loggers.CSVLogger`` from before the move. Rather than fourteen shim files at the top of the package (which
would hide the layout the move is for), one finder maps each old name to the module that now holds it: the old path
imports the very same module object, so ``isinstance`` checks and ``class_path`` lookups agree, and it warns once with
the new path (a ``DeprecationWarning``, shown only to code that asks for them).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

_TRAINING = (
    "allocator",
    "checks",
    "console",
    "dashboards",
    "distributed",
    "faults",
    "freezing",
    "loggers",
    "precision",
    "prediction",
    "stopping",
    "tracking",
)
_DEPLOY = ("export", "inference")

#: Old module path -> the module that holds its code now.
MOVED: dict[str, str] = {
    **{f"bertft.{name}": f"bertft.training.{name}" for name in _TRAINING},
    **{f"bertft.{name}": f"bertft.deploy.{name}" for name in _DEPLOY},
    # TextDataModule's module before the data modules became siblings on one base (bertft.data.base).
    "bertft.data.module": "bertft.data.text_module",
    # A script that derives data from the bundled files: it imports the data layer, which imports bertft.bundled.
    "bertft.bundled.make_multilabel": "bertft.data.make_multilabel",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``bertft.<old>`` as the module it moved to (the same object, registered under both names)."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        # The import system then overwrites __spec__ with the alias's: keep the module's own on the alias's spec (per
        # import, not on this shared finder, so two threads importing two old paths cannot swap them) to put it back.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Already executed under its new name: only undo the alias's spec (module.__spec__ is the alias's here).
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Lets the old module paths import (idempotent)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
