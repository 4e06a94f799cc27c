"""The package's layout: imports run one way (docs/guides/development.md, "Layout"), no circles, old paths import.

Read from the source with ``ast``, so every import counts, including those inside functions (which run later, but
still tie the modules together).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bertft._moved import MOVED

PACKAGE = Path(__file__).resolve().parents[1] / "bertft"

#: (layer, rank, module prefixes). A module may import its own layer and lower ranks; never a higher rank, and never
#: another layer of the same rank (deploy and sweep are siblings).
LAYERS: list[tuple[str, int, tuple[str, ...]]] = [
    # The model a researcher reads, and the leaf helpers it uses.
    (
        "model",
        0,
        (
            "bertft.io",
            "bertft.version",
            "bertft.encoder",
            "bertft.adapters",
            "bertft.heads",
            "bertft.ner",
            "bertft.tasks",
            "bertft.optim",
            "bertft.model",
            "bertft._moved",
        ),
    ),  # fmt: skip
    ("data", 1, ("bertft.data", "bertft.bundled")),
    ("training", 2, ("bertft.training",)),
    ("deploy", 3, ("bertft.deploy",)),
    ("sweep", 3, ("bertft.sweep",)),
    # What dispatches the commands, and what `import bertft` re-exports.
    ("entry", 4, ("bertft.cli", "bertft.__main__", "bertft")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> tuple[str, int]:
    """The layer and rank of ``module``: its longest matching prefix in :data:`LAYERS`."""
    matches = [
        (len(prefix), name, rank)
        for name, rank, prefixes in LAYERS
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no layer: add it to LAYERS here and to the development guide"
    _, name, rank = max(matches)
    return name, rank


def against_the_layout(module: str, target: str) -> bool:
    (layer, rank), (target_layer, target_rank) = layer_of(module), layer_of(target)
    return target_rank > rank or (target_rank == rank and target_layer != layer)


def imports_of(module: str) -> set[str]:
    """The bertft modules ``module`` imports (``from bertft import tasks`` is ``bertft.tasks``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "bertft"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside package `bertft.sweep`
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] != "bertft":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_imports_run_one_way() -> None:
    wrong = [
        f"{module} ({layer_of(module)[0]}) imports {target} ({layer_of(target)[0]})"
        for module in MODULES
        for target in sorted(imports_of(module))
        if against_the_layout(module, target)
    ]
    assert not wrong, "imports against the layout (docs/guides/development.md):\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    graph = {module: imports_of(module) - {"bertft"} for module in MODULES}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_rule_refuses_what_the_guide_forbids() -> None:
    """Not vacuous: the imports the development guide forbids are reported, and one the package has is seen."""
    assert against_the_layout("bertft.model", "bertft.training.checks")  # the model never imports the machinery
    assert against_the_layout("bertft.training.lightning_cli", "bertft.sweep.command")  # the old cli <-> sweep circle
    assert against_the_layout("bertft.sweep.runner", "bertft.deploy.export")  # siblings
    assert against_the_layout("bertft.data.text_module", "bertft.cli")
    assert not against_the_layout("bertft.deploy.inference", "bertft.training.checks")
    assert "bertft.training.checks" in imports_of("bertft.deploy.inference")
    assert "bertft.training.lightning_cli" in imports_of("bertft.sweep.validate")


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_import_the_moved_module(old: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old]  # the alias leaves the real module's own spec alone


def test_an_old_path_says_where_the_module_went() -> None:
    code = "import bertft.loggers as m; print(m.__name__)"
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bertft.training.loggers"
    assert "bertft.loggers moved to bertft.training.loggers" in result.stderr


def test_a_config_written_before_the_move_still_parses() -> None:
    """Saved config.yaml files name ``bertft.loggers.CSVLogger``; it must still resolve to the same class."""
    from bertft.training.lightning_cli import parse_config
    from bertft.training.loggers import CSVLogger

    root = PACKAGE.parent
    _, config = parse_config(["--config", str(root / "configs/quickstart.yaml"), "--trainer.logger",
                              '{"class_path": "bertft.loggers.CSVLogger", "init_args": {"name": "csv"}}'])  # fmt: skip
    logger = config.trainer.logger
    logger = logger[0] if isinstance(logger, list) else logger
    module, _, name = logger.class_path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is CSVLogger
