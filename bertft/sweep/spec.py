"""The sweep file: what to run, what to search, over which seeds, and how to judge a run.

A sweep file is YAML::

    configs: [configs/quickstart.yaml]        # the run's configs, as `fit --config` takes them (paths from the cwd)
    overrides: {trainer.limit_train_batches: 100}   # fixed dotted keys for every trial
    space:                                    # searched dotted keys
      model.lr: [2.0e-5, 5.0e-5]              # a list: grid values (categorical for tpe/random)
      model.warmup_ratio: {low: 0.0, high: 0.2}        # a range (tpe/random), optional log: true, step
      model.head: [{class_path: bertft.heads.MeanHead}, {class_path: bertft.heads.MaxHead}]
    seeds: [1, 2, 3]                          # or num_seeds: 3 (seeds 0, 1, 2)
    metric: val/acc                           # default: the task's primary validation metric
    sampler: grid                             # grid | tpe | random
    compare: model.head                       # optional: each head at its best point, every pair tested
    keep_checkpoints: best                    # best | all | none: what a finished trial leaves on disk
    confirm: 5                                # optional: rerun the chosen point(s) on 5 new seeds after the search

:func:`load_spec` checks the file's own structure and raises :class:`SweepError` with the file and key on any mistake;
:mod:`bertft.sweep.validate` then checks the keys and values against the real ``fit`` parser.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAMPLERS = ("grid", "tpe", "random")
DIRECTIONS = ("maximize", "minimize")
KEEP_CHECKPOINTS = ("best", "all", "none")  # see bertft.sweep.checkpoints
_KEYS = {
    "name",
    "configs",
    "overrides",
    "space",
    "seeds",
    "num_seeds",
    "metric",
    "direction",
    "sampler",
    "n_trials",
    "pruning",
    "storage",
    "workers",
    "output_dir",
    "trial_timeout",
    "sampler_seed",
    "compare",
    "keep_checkpoints",
    "confirm",
}


class SweepError(ValueError):
    """The sweep file is malformed: a missing or unknown key, an empty space, a bad range, ..."""


@dataclass(frozen=True)
class Range:
    """A numeric search range for the ``tpe`` and ``random`` samplers.

    Attributes:
        low: Smallest value (inclusive).
        high: Largest value (inclusive).
        log: Sample on a log scale (``low`` must be > 0).
        step: Spacing of the values (``None``: continuous floats, or every integer).
        integer: Sample integers (``suggest_int``) rather than floats.
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False


@dataclass(frozen=True)
class Choices:
    """A list of values: every one is a grid point (or a categorical choice for ``tpe`` / ``random``).

    Attributes:
        values: The values as written in the sweep file (numbers, strings, or mappings such as a head's
            ``class_path`` entry).
    """

    values: tuple[Any, ...]

    @property
    def encoded(self) -> list[Any]:
        """The values as Optuna stores categorical choices: scalars as they are, mappings and lists as JSON text."""
        return [encode(v) for v in self.values]


Dimension = Range | Choices


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring for its format).

    Attributes:
        path: The sweep file.
        name: The study name in the storage (default: the file's stem); also the W&B group.
        configs: The run's config files, resolved to absolute paths.
        overrides: Fixed ``dotted.key: value`` settings for every trial.
        space: Searched keys and their dimension, in file order.
        seeds: Every point runs once per seed (``seed_everything``).
        metric: The validation metric to optimise (``None``: the task's primary metric, filled in by validation).
        direction: ``maximize`` or ``minimize`` (``None``: from the metric, filled in by validation).
        sampler: ``grid``, ``tpe`` or ``random``.
        n_trials: Number of points: every grid point by default; 10 for ``tpe`` / ``random`` (fewer when the space
            holds fewer different points: more would only repeat one).
        pruning: Median-pruner settings (``n_startup_trials``, ``n_warmup_steps``), or ``None`` for no pruning.
        storage: An Optuna storage URL (``None``: ``sqlite:///<output_dir>/sweep.db``).
        workers: Parallel trials on this machine.
        output_dir: The sweep folder.
        trial_timeout: Seconds after which a trial is stopped and recorded as failed (``None``: no limit).
        sampler_seed: Seed of the ``tpe`` / ``random`` sampler.
        compare: A searched key (with a list of values) whose values the report compares, each at its best point.
        keep_checkpoints: What a finished trial keeps: ``best`` (the checkpoints ``--test_best`` reads, of the points
            that may still be the best), ``all``, or ``none`` (see :mod:`bertft.sweep.checkpoints`).
        confirm: After the search, rerun the chosen point (each compared value's, with ``compare``) on this many new
            seeds (``None``: no confirmation; see :mod:`bertft.sweep.confirm`).
    """

    path: Path
    name: str
    configs: list[Path]
    overrides: dict[str, Any]
    space: dict[str, Dimension]
    seeds: list[int]
    metric: str | None = None
    direction: str | None = None
    sampler: str = "grid"
    n_trials: int | None = None
    pruning: dict[str, int] | None = None
    storage: str | None = None
    workers: int = 1
    output_dir: Path = field(default_factory=lambda: Path("outputs/sweeps"))
    trial_timeout: float | None = None
    sampler_seed: int = 0
    compare: str | None = None
    keep_checkpoints: str = "best"
    confirm: int | None = None
    test_file: str | None = None  # the run's data.test_file, for --test_best (filled in by validation)

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL: the given one, or an SQLite file in the sweep folder."""
        return self.storage or f"sqlite:///{(self.output_dir / 'sweep.db').resolve()}"

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point (encoded values, see :func:`encode`), in the order the file lists keys and values."""
        names = list(self.space)
        lists = [dim.encoded for dim in self.space.values()]  # type: ignore[union-attr]  # grid: only Choices
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]

    @property
    def num_points(self) -> int:
        """How many points the sweep runs (each once per seed)."""
        if self.sampler == "grid":
            total = len(self.grid())
            return min(total, self.n_trials) if self.n_trials else total
        if self.n_trials:
            return self.n_trials
        distinct = distinct_points(self.space)
        return 10 if distinct is None else min(10, distinct)  # the default never asks for more points than exist


def distinct_points(space: dict[str, Dimension]) -> int | None:
    """How many different points ``space`` holds; ``None`` when a continuous range makes it unbounded.

    A ``tpe`` / ``random`` sweep asking for more points than this would draw repeats forever (each is dropped as a
    duplicate), so :func:`load_spec` refuses it.
    """
    total = 1
    for dim in space.values():
        if isinstance(dim, Choices):
            total *= len(dim.values)
        elif dim.integer:
            total *= int((dim.high - dim.low) // (dim.step or 1)) + 1
        elif dim.step is not None:
            total *= int(round((dim.high - dim.low) / dim.step, 9)) + 1
        else:
            return None
    return total


def encode(value: Any) -> Any:
    """A sweep value as an Optuna categorical choice: mappings and lists become canonical JSON text."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, str) and value[:1] in "{[":
        return json.loads(value)
    return value


def label(value: Any) -> str:
    """A short, readable form of a value for tables and progress lines (``MaxHead``, ``5e-05``, ...)."""
    value = decode(value)
    if isinstance(value, dict) and "class_path" in value:
        name = str(value["class_path"]).rsplit(".", 1)[-1]
        args = value.get("init_args") or {}
        return name + (f"({', '.join(f'{k}={label(v)}' for k, v in args.items())})" if args else "")
    if isinstance(value, str) and "." in value and value.rsplit(".", 1)[-1][:1].isupper():
        return value.rsplit(".", 1)[-1]  # a bare class path
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def short_key(key: str) -> str:
    """The last part of a dotted key, for column headers (``model.head.init_args.dropout`` -> ``dropout``)."""
    return key.rsplit(".", 1)[-1]


def load_spec(path: str | os.PathLike[str], output_dir: str | None = None) -> SweepSpec:
    """Reads and checks a sweep file.

    Args:
        path: The sweep YAML.
        output_dir: Overrides the file's ``output_dir``.

    Raises:
        SweepError: Naming the file and the key that is wrong, and what to write instead.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SweepError(f"sweep file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path}: expected a mapping with configs, space, seeds, ...")

    def fail(message: str) -> SweepError:
        return SweepError(f"sweep file {path}: {message}")

    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_KEYS), 1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(_KEYS))}"
        raise fail(f"unknown key {unknown[0]!r}{hint}")

    configs = raw.get("configs")
    if isinstance(configs, str):
        configs = [configs]
    if not configs or not isinstance(configs, list):
        raise fail("configs: give the run's config files, e.g. configs: [configs/quickstart.yaml]")
    config_paths = []
    for config in configs:
        found = Path(config) if Path(config).is_file() else path.parent / str(config)
        if not found.is_file():
            raise fail(f"configs: {config} not found (paths are read from the current folder, as `fit --config`)")
        config_paths.append(found.resolve())

    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise fail("overrides: give a mapping of dotted keys to values, e.g. {trainer.max_steps: 100}")

    space_raw = raw.get("space")
    if not space_raw:
        raise fail("space is empty: give at least one dotted key with a list of values or a {low, high} range")
    if not isinstance(space_raw, dict):
        raise fail("space: give a mapping of dotted keys to a list of values or a {low, high} range")
    space = {str(key): _dimension(str(key), value, fail) for key, value in space_raw.items()}
    both = sorted(set(space) & set(overrides))
    if both:
        raise fail(f"{both[0]} is both searched (space) and fixed (overrides): keep one")

    sampler = raw.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise fail(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if sampler == "grid":
        ranges = [key for key, dim in space.items() if isinstance(dim, Range)]
        if ranges:
            raise fail(f"space.{ranges[0]}: the grid sampler needs a list of values; use sampler: tpe or random")

    seeds = _seeds(raw, fail)
    n_trials = raw.get("n_trials")
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise fail(f"n_trials: {n_trials!r} is not a positive integer")
    distinct = distinct_points(space)
    if sampler != "grid" and n_trials is not None and distinct is not None and n_trials > distinct:
        raise fail(
            f"n_trials: {n_trials} is more than the {distinct} different points space holds, and {sampler} would "
            f"draw repeats forever: lower it to {distinct}, widen a range, or use sampler: grid to run each once"
        )
    workers = raw.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise fail(f"workers: {workers!r} is not a positive integer")
    direction = raw.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise fail(f"direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise fail(f"metric: {metric!r} is not a metric name such as val/acc")
    timeout = raw.get("trial_timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise fail(f"trial_timeout: {timeout!r} is not a positive number of seconds")

    sampler_seed = raw.get("sampler_seed", 0)
    if not isinstance(sampler_seed, int) or isinstance(sampler_seed, bool):
        raise fail(f"sampler_seed: {sampler_seed!r} is not an integer")
    compare = raw.get("compare")
    if compare is not None:
        if compare not in space:
            close = difflib.get_close_matches(str(compare), list(space), 1)
            hint = f"did you mean {close[0]!r}?" if close else f"searched: {', '.join(space)}"
            raise fail(f"compare: {compare!r} is not a key of space ({hint})")
        if not isinstance(space[compare], Choices):
            raise fail(f"compare: space.{compare} is a range; comparing needs a list of values")
    keep = raw.get("keep_checkpoints", "best")
    if keep not in KEEP_CHECKPOINTS:
        raise fail(f"keep_checkpoints: {keep!r} is not one of {', '.join(KEEP_CHECKPOINTS)}")
    confirm = raw.get("confirm")
    if confirm is not None and (not isinstance(confirm, int) or isinstance(confirm, bool) or confirm < 1):
        raise fail(f"confirm: {confirm!r} is not a positive number of new seeds")
    name = str(raw.get("name") or path.stem)
    out = Path(output_dir or raw.get("output_dir") or Path("outputs") / "sweeps" / name)
    return SweepSpec(
        path=path.resolve(),
        name=name,
        configs=config_paths,
        overrides={str(k): v for k, v in overrides.items()},
        space=space,
        seeds=seeds,
        metric=metric,
        direction=direction,
        sampler=sampler,
        n_trials=n_trials,
        pruning=_pruning(raw.get("pruning"), fail),
        storage=raw.get("storage"),
        workers=workers,
        output_dir=out,
        trial_timeout=float(timeout) if timeout is not None else None,
        sampler_seed=sampler_seed,
        compare=compare,
        keep_checkpoints=keep,
        confirm=confirm,
    )


def _dimension(key: str, value: Any, fail: Any) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise fail(f"space.{key} is an empty list: give at least one value")
        encoded = [encode(v) for v in value]
        if len(set(map(repr, encoded))) != len(encoded):
            raise fail(f"space.{key} lists a value twice: {value}")
        return Choices(tuple(value))
    if isinstance(value, dict) and "low" in value and "high" in value:
        extra = sorted(set(value) - {"low", "high", "log", "step", "type"})
        if extra:
            raise fail(f"space.{key}: unknown range option {extra[0]!r} (use low, high, log, step, type)")
        low, high = value["low"], value["high"]
        for bound in (low, high):
            if not isinstance(bound, int | float) or isinstance(bound, bool) or not math.isfinite(bound):
                raise fail(f"space.{key}: low and high must be numbers (got {bound!r}; write 1.0e-5, not 1e-5)")
        if low > high:
            raise fail(f"space.{key}: low {low} is greater than high {high}")
        log = bool(value.get("log", False))
        if log and low <= 0:
            raise fail(f"space.{key}: a log range needs low > 0 (got {low})")
        kind = value.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
        if kind not in ("int", "float"):
            raise fail(f"space.{key}: type {kind!r} is not int or float")
        step = value.get("step")
        if step is not None and (not isinstance(step, int | float) or step <= 0):
            raise fail(f"space.{key}: step {step!r} is not a positive number")
        return Range(float(low), float(high), log=log, step=step, integer=kind == "int")
    raise fail(f"space.{key}: give a list of values or a range {{low: ..., high: ...}}, not {value!r}")


def _seeds(raw: dict[str, Any], fail: Any) -> list[int]:
    if "seeds" in raw and "num_seeds" in raw:
        raise fail("give seeds or num_seeds, not both")
    if "seeds" in raw:
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise fail(f"seeds: {seeds!r} is not a non-empty list of integers")
        if len(set(seeds)) != len(seeds):
            raise fail(f"seeds: {seeds} lists a seed twice")
        return list(seeds)
    num = raw.get("num_seeds", 1)
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise fail(f"num_seeds: {num!r} is not a positive integer")
    return list(range(num))


def _pruning(value: Any, fail: Any) -> dict[str, int] | None:
    if value in (None, False):
        return None
    settings = {"n_startup_trials": 4, "n_warmup_steps": 0}
    if value is True:
        return settings
    if not isinstance(value, dict) or set(value) - set(settings):
        raise fail(f"pruning: give true, or a mapping with n_startup_trials and n_warmup_steps (got {value!r})")
    settings.update({k: int(v) for k, v in value.items()})
    return settings


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"model.lr": 1e-4}`` as the nested mapping a config file holds: ``{"model": {"lr": 1e-4}}``."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SweepError(f"{key}: {'.'.join(parents)} is set to a value and also used as a section")
            node = child
        value = decode(value)
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            value = {**value, **node[leaf]}  # `model.head` and `model.head.init_args.x` both given: keep both
        node[leaf] = value
    return root
