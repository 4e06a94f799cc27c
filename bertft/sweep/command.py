"""``bertft sweep``: run a sweep (``--config sweep.yaml``), or rebuild its report from storage (``--report DIR``)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from bertft.io import atomic_write_text
from bertft.sweep.spec import SweepError, SweepSpec, load_spec
from bertft.sweep.validate import overlay_yaml

RECORD = "sweep.json"


def main(argv: list[str] | None = None) -> None:
    """Runs ``bertft sweep`` with ``argv`` (default ``sys.argv[2:]``); exits 2 on bad input, 130 when stopped."""
    parser = argparse.ArgumentParser(
        prog="bertft sweep",
        description="Search hyperparameters and repeat each point over seeds, on Optuna; "
        "writes trials.csv, summary.csv, summary.md and summary.png. See docs/guides/sweeps.md.",
    )
    parser.add_argument("--config", metavar="SWEEP_YAML", help="the sweep file (configs, space, seeds, metric, ...)")
    parser.add_argument("--report", metavar="FOLDER", help="rebuild a sweep folder's report from its storage and exit")
    parser.add_argument(
        "--compare",
        metavar="KEY",
        help="with --report: compare the values of this searched key (e.g. model.head), each at its best point",
    )
    parser.add_argument(
        "--with",
        dest="with_files",
        metavar="TRIALS_CSV",
        action="append",
        default=[],
        help="with --report: also compare the finished trials of an earlier sweep, read from its trials.csv "
        "(repeatable; seeds pair across files, so the earlier sweep must have the same budget and data)",
    )
    parser.add_argument(
        "--output_dir", help="the sweep folder (default: the file's output_dir, or outputs/sweeps/NAME)"
    )
    parser.add_argument("--workers", type=int, help="parallel trials on this machine (overrides the file's workers)")
    parser.add_argument("--test_best", action="store_true", help="after the search, test the best point's checkpoints")
    parser.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="after the search, rerun the chosen point (with compare: each value's) on K new seeds the search never "
        "used, reported beside the search's figures (overrides the file's confirm)",
    )
    args = parser.parse_args(sys.argv[2:] if argv is None else argv)
    if bool(args.config) == bool(args.report):
        parser.error("give --config sweep.yaml to run a sweep, or --report <sweep folder> to rebuild its report")
    if args.compare and not args.report:
        parser.error("--compare goes with --report; in a sweep file, write compare: KEY")
    if args.with_files and not args.report:
        parser.error("--with goes with --report: run the sweep, then --report FOLDER --with OTHER/trials.csv")
    try:
        if args.report:
            report(Path(args.report), args.compare, [Path(f) for f in args.with_files])
            return
        spec = load_spec(args.config, args.output_dir)
        if args.workers is not None:
            if args.workers < 1:
                raise SweepError(f"--workers {args.workers}: give a positive number")
            spec.workers = args.workers
        if args.confirm is not None:
            if args.confirm < 1:
                raise SweepError(f"--confirm {args.confirm}: give a positive number of new seeds")
            spec.confirm = args.confirm
        from bertft.sweep.validate import check_spec

        check_spec(spec)
        from bertft.sweep.study import check_driver

        check_driver(spec.storage_url)  # a missing database driver: one line now, not a traceback mid-sweep
        if args.test_best and not spec.test_file:
            raise SweepError(f"--test_best: the run's config in {spec.path} names no data.test_file to test on")
        if args.test_best and spec.keep_checkpoints == "none":
            raise SweepError(
                f"--test_best tests the best point's checkpoints, and {spec.path} sets keep_checkpoints: none (no "
                "checkpoint survives a finished trial): set keep_checkpoints: best (the default) or all"
            )
    except SweepError as err:
        sys.stderr.write(f"bertft sweep: error: {err}\n")
        sys.exit(2)
    sys.exit(run(spec, test_best=args.test_best))


def run(spec: SweepSpec, test_best: bool = False) -> int:
    """Runs (or resumes, or joins) the sweep, then writes its report; returns the exit status."""
    from bertft.sweep.report import write_report
    from bertft.sweep.runner import Sweep
    from bertft.sweep.study import open_study

    spec.output_dir.mkdir(parents=True, exist_ok=True)
    try:
        study, storage = open_study(spec)
    except SweepError as err:
        sys.stderr.write(f"bertft sweep: error: {err}\n")
        return 2
    record = {"name": spec.name, "storage": spec.storage_url, "metric": spec.metric, "direction": spec.direction}
    record["compare"] = spec.compare
    atomic_write_text(spec.output_dir / RECORD, json.dumps({**record, "sweep_file": str(spec.path)}, indent=1))
    if spec.path != (spec.output_dir / "sweep.yaml").resolve():
        shutil.copyfile(spec.path, spec.output_dir / "sweep.yaml")  # the sweep as run, beside its results
    sweep = Sweep(spec, study, storage)
    print(
        f"sweep {spec.name}: {spec.num_points} points x {len(spec.seeds)} seeds, {spec.sampler} sampler, "
        f"{spec.workers} worker(s) of {sweep.threads} threads; {spec.metric} ({spec.direction}); "
        f"storage {_shown(spec.storage_url)}; folder {spec.output_dir}",
        flush=True,
    )
    note = password_note(spec.storage_url)
    if note:
        print(note, flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        print(f"\nstopping: {signal.Signals(signum).name}; running trials are stopped and enqueued again", flush=True)
        sweep.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sweep.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if sweep.halted:
        print(
            f"sweep stopped, no further trial started: {sweep.halted}; then run the same command to resume (the "
            f"trial that found no room runs then). Report: {spec.output_dir / 'summary.md'}"
        )
        return 1
    if sweep.stop.is_set() and not sweep.finished:
        print(f"sweep stopped; run the same command to resume. Report: {spec.output_dir / 'summary.md'}")
        return 130
    if spec.confirm:
        _print_confirmation(spec, study)
    if test_best:
        _test_best(spec, study)
        write_report(study, spec.output_dir, spec.metric, str(spec.direction), compare=spec.compare)
    print(f"report: {spec.output_dir / 'summary.md'} (and trials.csv, summary.csv, summary.png)")
    return 0


def report(folder: Path, compare: str | None = None, with_files: list[Path] | None = None) -> None:
    """``--report``: rebuilds the folder's outputs from the storage recorded in its ``sweep.json``.

    ``compare`` (default: the sweep file's ``compare``) also writes ``compare.md``, and prints the ranking.
    ``with_files`` (earlier sweeps' ``trials.csv``) join the comparison as points of their own.
    """
    import optuna

    from bertft.sweep.compare import write_comparison
    from bertft.sweep.imported import merge
    from bertft.sweep.report import write_report
    from bertft.sweep.study import storage_for

    record_file = folder / RECORD
    if not record_file.is_file():
        raise SweepError(f"{folder} is not a sweep folder: it has no {RECORD} (give the folder a sweep wrote)")
    record = json.loads(record_file.read_text(encoding="utf-8"))
    study = optuna.load_study(study_name=record["name"], storage=storage_for(record["storage"]))
    compare = compare or record.get("compare")
    if with_files and not compare:
        raise SweepError("--with compares values of a key: add --compare KEY (e.g. model.head)")
    write_report(study, folder, record["metric"], record["direction"], compare=compare)
    print(f"report: {folder / 'summary.md'}")
    if compare:
        from bertft.sweep import study as studies
        from bertft.sweep.compare import comparison_text

        trials = merge(studies.sweep_trials(study), with_files or [], record["metric"])
        if with_files:  # compare.* again, with the earlier sweeps' trials
            from bertft.sweep.confirm import compare_notes, confirmation_trials, figures

            confirmed = figures(studies.sweep_trials(study), confirmation_trials(study))
            notes = compare_notes(trials, confirmed, compare, record["direction"], record["metric"])
            write_comparison(trials, compare, record["metric"], record["direction"], folder, notes=notes)
        print(f"compare: {folder / 'compare.md'}\n" + comparison_text(trials, compare, record["direction"]), end="")


def _test_best(spec: SweepSpec, study: Any) -> None:
    """Tests each finished seed of the best point from its best checkpoint; writes ``test_best.csv``."""
    from bertft.sweep import study as studies
    from bertft.sweep.points import point_label, summarize_points
    from bertft.sweep.stats import summarize
    from bertft.sweep.trial import trial_args, trial_process

    trials = studies.sweep_trials(study)
    _, best = summarize_points(trials, str(spec.direction))
    if best is None:
        print("--test_best: no finished trial to test")
        return
    done = [t for t in trials if t.user_attrs["point"] == best and t.state.name == "COMPLETE"]
    rows: list[dict[str, Any]] = []
    for trial in sorted(done, key=lambda t: t.user_attrs["seed"]):
        folder = Path(trial.user_attrs["folder"])
        checkpoint = trial.user_attrs.get("best_model_path")
        if not checkpoint or not Path(checkpoint).is_file():
            print(f"--test_best: seed {trial.user_attrs['seed']}: no best checkpoint in {folder}; skipped")
            continue
        overlay = folder / "sweep_test.yaml"
        overlay.write_text(
            overlay_yaml({"data.test_file": spec.test_file, "trainer.default_root_dir": str(folder / "test")}),
            encoding="utf-8",
        )
        result = folder / "test_result.json"
        result.unlink(missing_ok=True)
        configs = [*spec.configs, folder / "sweep_trial.yaml", overlay]
        args = trial_args("test", configs, {"result_file": str(result), "metric": spec.metric}, ckpt_path=checkpoint)
        command = trial_process(args)
        with open(folder / "test.log", "w", encoding="utf-8") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
        if code != 0 or not result.is_file():
            print(f"--test_best: seed {trial.user_attrs['seed']}: test failed (see {folder / 'test.log'})")
            continue
        metrics = json.loads(result.read_text(encoding="utf-8"))["test"]
        rows.append({"point": best, "seed": trial.user_attrs["seed"], **metrics, "checkpoint": checkpoint})
    if not rows:
        return
    names = sorted({k for r in rows for k in r} - {"point", "seed", "checkpoint"})
    out = io.StringIO()
    writer = csv.DictWriter(out, ["point", "seed", *names, "checkpoint"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(spec.output_dir / "test_best.csv", out.getvalue())
    params = done[0].user_attrs["params"]
    for name in names:
        s = summarize([r[name] for r in rows if name in r])
        print(f"test, best point {best} ({point_label(params)}): {name} {s.mean_sd()} over {s.n} seed(s)")


def _print_confirmation(spec: SweepSpec, study: Any) -> None:
    """One line per confirmed point: its figures on the new seeds beside the search's."""
    from bertft.sweep import study as studies
    from bertft.sweep.confirm import confirmation_trials, figures
    from bertft.sweep.points import point_label

    for row in figures(studies.sweep_trials(study), confirmation_trials(study)):
        s, before = row["summary"], row["search"]
        spread = f", 95% CI {s.interval()}" if s.n > 1 else ""
        line = (
            f"confirmed, point {row['point']} ({point_label(row['params'])}): {spec.metric} {s.mean_sd()}{spread} "
            f"over {s.n} new seed(s) ({', '.join(map(str, row['seeds']))})"
        )
        if before is not None:
            line += f"; the search: {before.mean:.4f} over {before.n} seed(s)"
        print(line)


def password_note(url: str) -> str | None:
    """What to do instead when the storage URL holds a password (written to files a team shares); None otherwise."""
    from sqlalchemy.engine import make_url

    if not make_url(url).password:
        return None
    return (
        "note: the storage URL holds a password, which the sweep file and sweep.json keep (and, with pruning, each "
        "trial's command line): leave it out of the URL and give it by PGPASSWORD or ~/.pgpass (PostgreSQL)"
    )


def _shown(url: str) -> str:
    """A storage URL as printed: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
