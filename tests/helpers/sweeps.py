"""Driving ``bertft sweep`` from tests: a sweep file beside a fit config, the command under a timeout, its outputs."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import yaml

from .cli import run_bertft
from .data import ROOT

TIMEOUT = 600  # seconds for one sweep command; each trial takes seconds


def write_sweep(tmp_path: Path, base: Path, **fields: object) -> Path:
    sweep = {"configs": [str(base)], "output_dir": str(tmp_path / "sweep"), **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def sweep(path: Path, *extra: str, **options) -> subprocess.CompletedProcess:
    """``python -m bertft sweep --config <path>`` from the sweep's folder, as users run it; see ``run_bertft``."""
    options = {"timeout": TIMEOUT, "cwd": path.parent, "env": {"PYTHONPATH": str(ROOT)}, **options}
    return run_bertft("sweep", "--config", str(path), *extra, **options)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def attempts(folder: Path) -> int:
    """How many times a trial folder's fit was started (one header line per start in trial.log)."""
    return (folder / "trial.log").read_text(encoding="utf-8").count("===== trial ")
