"""The notebooks in notebooks/ run top to bottom on the packaged MiniLM and the bundled data, and ship with outputs.

Executing them is slow (minutes on 2 cores), so that test is marked ``slow``; CI runs it. Each notebook runs in a
temporary copy of notebooks/, so the committed outputs are never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))

# Bounds that catch a hang, not a slow machine: about 4x what a quiet 2-core machine takes (notebook 2, the longest,
# about 10 minutes for its 30 short fine-tuning runs of ten heads; its longest cell trains 17 of them). On a machine
# shared with other test runs it takes 2-3x.
CELL_TIMEOUT_S = 1500
NOTEBOOK_TIMEOUT_S = 3000


def test_notebooks_are_found() -> None:
    assert NOTEBOOKS == ["01_bert_outputs.ipynb", "02_compare_heads.ipynb", "03_custom_head.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_outputs(name: str) -> None:
    """Committed with the outputs of a real run: every code cell executed in order, no errors, plots embedded."""
    notebook = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    counts = [cell.get("execution_count") for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{name}: execute it top to bottom before committing ({counts})"
    outputs = [output for cell in code for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{name} was committed with an error output"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} has no embedded plot"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs every cell in a fresh kernel; any exception in a cell fails the test."""
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbclient, nbformat, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient, nbformat, ipykernel)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[dev]' (nbclient, nbformat, ipykernel)")

    # A copy of the folder: the notebooks write files next to themselves (notebook 3 writes my_heads.py).
    workdir = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, workdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    # The kernel inherits this environment: offline, no W&B server, the test run's token cache (conftest.py).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("BERTFT_CACHE", os.environ["BERTFT_CACHE"])
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    notebook = nbformat.read(workdir / name, as_version=4)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S

    def cell_timeout(_source: str) -> int:
        # Bounds each cell and, through the shrinking deadline, the whole notebook.
        return max(1, min(CELL_TIMEOUT_S, int(deadline - time.monotonic())))

    client = nbclient.NotebookClient(
        notebook,
        timeout_func=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellTimeoutError:
        pytest.fail(f"{name} ran past its budget ({CELL_TIMEOUT_S} s a cell, {NOTEBOOK_TIMEOUT_S} s in all)")
    # A cell that raises makes execute() raise CellExecutionError, which fails the test with the cell's traceback.
