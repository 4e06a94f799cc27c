"""What the tests share besides fixtures: real SST-2 rows and data files (``data``), quiet trainers and batches
(``training``), driving ``bertft sweep`` (``sweeps``), the command line's arguments and running ``python -m bertft``
under a timeout (``cli``).

Import from here: ``from .helpers import cli_args, sst2_rows, write_tsv``. Fixtures live in ``conftest.py``, the
multi-process (DDP) launcher in ``ddp.py``, the tiny encoders of every family in ``families.py``.
"""

from .cli import cli_args, kill_once_written, last_lr, resume_fit_args, run_bertft
from .data import (
    BUNDLED,
    CONFIGS,
    MINILM,
    ROOT,
    bundled_lines,
    sst2_rows,
    subset,
    word_predictions,
    write_conll,
    write_lines,
    write_tsv,
)
from .sweeps import TIMEOUT, attempts, read_csv, sweep, write_sweep
from .training import fit, make_batches, quiet_trainer, train_losses

__all__ = [
    "BUNDLED",
    "TIMEOUT",
    "attempts",
    "read_csv",
    "sweep",
    "write_sweep",
    "CONFIGS",
    "MINILM",
    "ROOT",
    "bundled_lines",
    "cli_args",
    "fit",
    "kill_once_written",
    "last_lr",
    "make_batches",
    "quiet_trainer",
    "resume_fit_args",
    "run_bertft",
    "sst2_rows",
    "subset",
    "train_losses",
    "word_predictions",
    "write_conll",
    "write_lines",
    "write_tsv",
]
