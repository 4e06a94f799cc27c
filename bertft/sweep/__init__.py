"""Sweeps and seeds: many runs of ``fit``, searched on Optuna and repeated over seeds, summarised with error bars.

``bertft sweep --config sweep.yaml`` searches a config space, runs every point once per seed as a normal ``fit`` in
its own folder, and reports each point's mean, sd and 95% interval over seeds.

Modules: :mod:`~bertft.sweep.spec` (the sweep file), :mod:`~bertft.sweep.validate` (checks against the ``fit``
parser), :mod:`~bertft.sweep.study` (exactly-once trials on Optuna storage; the only module that touches Optuna's
private state), :mod:`~bertft.sweep.runner` (workers and trial subprocesses), :mod:`~bertft.sweep.trial` (the
callback inside a trial, and the one builder of a trial's command), :mod:`~bertft.sweep.stats` (seed statistics),
:mod:`~bertft.sweep.points` (results per point), :mod:`~bertft.sweep.report` (trials.csv, summary.csv/.md/.png),
:mod:`~bertft.sweep.compare` (compare.csv/.md/.png), :mod:`~bertft.sweep.tables` (the CSV, Markdown and plot both
write), :mod:`~bertft.sweep.checkpoints` (which checkpoints finished trials keep), :mod:`~bertft.sweep.disk` (the
disk in use and the free-space check), :mod:`~bertft.sweep.confirm` (the chosen points on new seeds),
:mod:`~bertft.sweep.command` (the CLI).
"""

from bertft.sweep.spec import SweepError, SweepSpec, load_spec
from bertft.sweep.stats import Summary, paired_t_test, summarize

__all__ = ["SweepError", "SweepSpec", "Summary", "load_spec", "paired_t_test", "summarize"]
