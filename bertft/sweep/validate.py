"""Checks a sweep against the real ``fit`` parser before any trial starts.

Every searched and fixed key must exist in the run's config (else ``did you mean``), and every listed value (both
ends of a range) must parse as ``fit`` would parse it; the metric must be one the task logs. Values that parse but
fail when the run builds (a dropout of 1.5, a negative learning rate) are the trial's own failure, recorded with its
error while the sweep goes on.
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bertft.sweep.spec import Choices, SweepError, SweepSpec, nested
from bertft.tasks import PRIMARY_METRIC, metrics
from bertft.training.lightning_cli import known_keys, parse_config


def overlay_yaml(flat: dict[str, Any]) -> str:
    """Dotted ``key: value`` settings as a config file layered after the run's own (``--config``)."""
    return yaml.safe_dump(nested(flat), sort_keys=False)


def check_spec(spec: SweepSpec) -> None:
    """Checks keys, values and the metric, and fills in the default metric and direction.

    Raises:
        SweepError: One line naming the sweep file, the key or value, and what to do.
    """
    base = [arg for config in spec.configs for arg in ("--config", str(config))]
    parser, config = parse_config(base)
    known = set(known_keys(parser)) | set(config.keys())
    known |= {".".join(k.split(".")[:i]) for k in set(known) for i in range(1, k.count(".") + 1)}
    for section, keys in (("overrides", spec.overrides), ("space", spec.space)):
        for key in keys:
            _check_key(spec, section, key, known, set(spec.space))

    parser.exit_on_error = False  # errors raise here, so the message can name the sweep file and key
    with tempfile.TemporaryDirectory() as tmp:

        def parse(flat: dict[str, Any], what: str) -> Any:
            overlay = Path(tmp) / "overlay.yaml"
            overlay.write_text(overlay_yaml(flat), encoding="utf-8")
            try:
                return parser.parse_args([*base, "--config", str(overlay)])
            except Exception as err:  # jsonargparse's ArgumentError, or a config that cannot be merged
                message = " ".join(str(err).split())
                raise SweepError(f"sweep file {spec.path}: {what} does not fit the run's config: {message}") from err

        resolved = parse(spec.overrides, "overrides")
        for key, dim in spec.space.items():
            values = dim.encoded if isinstance(dim, Choices) else [dim.low, dim.high]
            for value in values:
                if not isinstance(dim, Choices) and dim.integer:
                    value = int(value)
                parse({**spec.overrides, key: value}, f"space.{key} = {value!r}")

    data = resolved.data.get("init_args", resolved.data)
    spec.test_file = data.get("test_file")
    task = spec.space["model.task"].values[0] if isinstance(spec.space.get("model.task"), Choices) else None
    task = str(task or resolved.model.task)
    logged = ["val/loss", *(f"val/{name}" for name in metrics(task, num_labels=2))]
    if spec.metric is None:
        spec.metric = f"val/{PRIMARY_METRIC[task]}"
        spec.direction = spec.direction or "maximize"  # the checkpoint callback's mode: higher is better
    elif spec.metric not in logged:
        close = difflib.get_close_matches(spec.metric, logged, 1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SweepError(
            f"sweep file {spec.path}: metric {spec.metric!r} is not logged by task {task!r}; {hint}"
            f"choose one of {', '.join(logged)}"
        )
    if spec.direction is None:
        spec.direction = "minimize" if spec.metric.endswith(("loss", "mse")) else "maximize"


def _check_key(spec: SweepSpec, section: str, key: str, known: set[str], searched: set[str]) -> None:
    # `data.batch_size` is short for `data.init_args.batch_size` (a class_path entry's arguments), as in `fit`.
    candidates = known | {k.replace(".init_args.", ".") for k in known}
    if key in candidates:
        return
    # Keys below a searched class_path entry (a head's init_args) depend on the class of each point: the value parse
    # checks them.
    parents = [".".join(key.split(".")[:i]) for i in range(1, key.count(".") + 1)]
    if any(p in searched for p in parents):
        return
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "see `bertft fit --help` for every key"
    raise SweepError(f"sweep file {spec.path}: {section}.{key} is not a key of the run's config; {hint}")
