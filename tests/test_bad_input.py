"""Bad input through the real entry point: one test per row of the "Bad input" table (docs/guides/bad-input.md).

Each asserts a non-zero exit, one paragraph on stderr that names the file, line, key or value (no traceback), and
that nothing is left in the output folder: no checkpoint, no predictions, no half-written run.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import bertft
from bertft.cli import main
from bertft.encoder import resolve_encoder
from bertft.training.checks import UnsafeCheckpointError, checkpoint_mismatches

from .helpers import cli_args, sst2_rows, write_tsv


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Runs the command line in this process (as ``python -m bertft`` would) and returns its exit code and output."""

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The run's output folder (``trainer.default_root_dir``); the tests check that nothing lands in it."""
    return tmp_path / "run"


def neg_pos_rows(n: int) -> list[tuple[str, str]]:
    """Real SST-2 rows with their labels spelt ``neg`` and ``pos``."""
    return [(s, "pos" if y == "1" else "neg") for s, y in sst2_rows("train", n)]


@pytest.fixture
def train(tmp_path: Path) -> str:
    return write_tsv(tmp_path / "train.tsv", neg_pos_rows(24))


def fit_args(tiny_bert_dir: Path, out: Path, *extra: str) -> list[str]:
    """A one-step fit of the tiny random BERT; the default logger stays on, so its folders would show.

    The token cache sits beside ``out``, so that nothing a refused run may write lands in it.
    """
    return cli_args(out, "--trainer.enable_model_summary=false", *extra, encoder=tiny_bert_dir, quoting=False,
                    batch_size=8, max_steps=1, cache_dir=out.parent / "cache")  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, out: Path, *fragments: str) -> None:
    """Non-zero exit, a short message naming each fragment, no traceback, and no output at all."""
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert not left, f"the failed run left {left} in {out}"


# ----- data files --------------------------------------------------------------------------------------------------


def test_missing_data_file(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={missing}"))
    assert_refused(result, out, str(missing), "does not exist")


def test_empty_data_file(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    assert_refused(run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={empty}")), out, str(empty), "is empty")
    header_only = write_tsv(tmp_path / "header.tsv", [])
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={header_only}"))
    assert_refused(result, out, str(header_only), "no data rows")


def test_file_that_is_not_utf8(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    rows = neg_pos_rows(10)
    text = "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows) + "un caf\xe9 froid\tneg\n"
    path.write_bytes(text.encode("latin-1"))
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={path}"))
    assert_refused(result, out, str(path), "not valid utf-8", "line 12", "encoding")


def test_ragged_row(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "ragged.tsv", sst2_rows("train", 10))
    with open(path, "a", encoding="utf-8") as f:
        f.write("one\ttoo\tmany\n")
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={path}"))
    assert_refused(result, out, str(path), "line 12", "expected 2 fields")


def test_missing_label_column_lists_the_columns(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "cols.tsv", sst2_rows("train", 10), header=("sentence", "polarity"))
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={path}"))
    assert_refused(result, out, str(path), "no column 'label'", "'polarity'")


def test_missing_text_column(run_cli, tiny_bert_dir: Path, out: Path, train: str) -> None:
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}", "--data.text_column=review"))
    assert_refused(result, out, str(train), "no column 'review'", "'sentence'")


def test_empty_text(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "empty_text.tsv", [*sst2_rows("train", 10), ("", "1")])
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={path}"))
    assert_refused(result, out, str(path), "line 12", "is empty", "skip_empty_text")


def test_empty_text_skipped_and_counted_when_asked(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "empty_text.tsv", [*sst2_rows("train", 10), ("", "1")])
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        result = run_cli(
            *fit_args(tiny_bert_dir, out, f"--data.train_file={path}", "--data.skip_empty_text=true"),
            "--trainer.fast_dev_run=1",
        )
    assert result.returncode == 0, result.stderr[-3000:]


def test_label_never_seen_in_training(run_cli, tiny_bert_dir: Path, out: Path, train: str, tmp_path: Path) -> None:
    val = write_tsv(tmp_path / "val.tsv", [("a fine film", "pos"), ("a so-so film", "meh")])
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}", f"--data.val_file={val}"))
    assert_refused(result, out, str(val), "line 3", "'meh'", "['neg', 'pos']")


def test_labels_all_one_class(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "one.tsv", [(s, "pos") for s, _ in sst2_rows("train", 10)])
    # With the other label named, a warning names the file and the run goes on.
    with pytest.warns(UserWarning, match=rf"every training example in {path} has the label"):
        ok = run_cli(
            *fit_args(tiny_bert_dir, tmp_path / "ok", f"--data.train_file={path}", "--data.label_names=[neg, pos]"),
            "--trainer.fast_dev_run=1",
        )
    assert ok.returncode == 0, ok.stderr[-3000:]
    # Without, classification has a single label: it stops (after the same warning).
    with pytest.warns(UserWarning, match="has the label"):
        result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={path}"))
    assert_refused(result, out, "num_labels=1", "at least 2 labels")


def test_text_longer_than_max_length_is_truncated_and_counted(
    run_cli, tiny_bert_dir: Path, out: Path, train: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        result = run_cli(
            *fit_args(tiny_bert_dir, out, f"--data.train_file={train}", "--data.max_length=8"),
            "--trainer.fast_dev_run=1",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    texts = [s for s, _ in sst2_rows("train", 24)]
    assert any(len(t.split()) > 8 for t in texts)
    assert any(f"train ({train}): 24 examples, " in m and "truncated to 8 tokens" in m for m in caplog.messages)
    assert not any(" 0 truncated" in m for m in caplog.messages if f"train ({train})" in m)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--data.val_fraction=1.5"], ["val_fraction=1.5", "outside (0, 1)"]),
        (["--data.val_fraction=0.0"], ["val_fraction=0.0", "outside (0, 1)"]),
        (["--data.val_fraction=24"], ["holds out 24 of the 24 rows", "leaving no training row"]),
        (["--data.val_fraction=0.1", "--data.val_file={train}"], ["val_file", "val_fraction", "both set"]),
        (["--model.class_weights=[1.0, 2.0, 3.0]"], ["class_weights has 3 values", "2 labels"]),
        (["--model.class_weights=[1.0, -2.0]"], ["class_weights=[1.0, -2.0]", "0 or more"]),
        (["--data.long_texts=windows", "--data.stride=128"], ["stride=128", "max_length=128"]),
    ],
    ids=["fraction>1", "fraction=0", "no-train-rows", "val-file-too", "weights-length", "weights-negative", "stride"],
)
def test_bad_split_weight_and_window_settings(
    run_cli, tiny_bert_dir: Path, out: Path, train: str, options: list[str], fragments: list[str]
) -> None:
    options = [o.format(train=train) for o in options]
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}", *options))
    assert result.returncode == 2, result.stderr[-3000:]
    assert_refused(result, out, *fragments)
    message = result.stderr[result.stderr.index("bertft: error:") :].strip().splitlines()
    assert len(message) == 2, message  # one line, then the BERTFT_DEBUG hint


def test_class_left_without_training_rows_by_the_split(run_cli, tiny_bert_dir: Path, out: Path, tmp_path: Path) -> None:
    # 12 neg, 11 pos, 1 rare: holding out 90% (stratified, largest remainders) takes the one 'rare' row too.
    rows = [(s, "neg" if i < 12 else "pos") for i, (s, _) in enumerate(sst2_rows("train", 23))]
    path = write_tsv(tmp_path / "rare.tsv", [*rows, ("a rare sentence", "rare")])
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={path}", "--data.val_fraction=0.9"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert_refused(result, out, "['rare']", "no training row", "val_fraction", "label_names")


# ----- config ------------------------------------------------------------------------------------------------------


def test_misspelt_config_key_suggests_the_close_one(run_cli, tiny_bert_dir: Path, out: Path, train: str) -> None:
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}", "--model.warmup_ratoi=0.1"))
    assert result.returncode == 2
    assert "did you mean 'model.warmup_ratio'" in result.stderr
    assert len(result.stderr.splitlines()) <= 4, result.stderr  # one paragraph, no page of usage
    assert_refused(result, out)


def test_head_class_path_that_does_not_import(run_cli, tiny_bert_dir: Path, out: Path, train: str) -> None:
    result = run_cli(
        *fit_args(tiny_bert_dir, out, f"--data.train_file={train}", "--model.head=bertft.heads.NoSuchHead")
    )
    assert_refused(result, out, "bertft.heads.NoSuchHead")


def test_pooler_head_on_an_encoder_without_pooler(
    run_cli, tiny_distilbert_dir: Path, out: Path, train: str, tiny_bert_dir: Path
) -> None:
    args = fit_args(tiny_bert_dir, out, f"--data.train_file={train}", "--model.head=bertft.heads.PoolerHead")
    result = run_cli(*args, f"--model.encoder={tiny_distilbert_dir}")
    assert_refused(result, out, str(tiny_distilbert_dir), "has no pooler", "pooler_output", "MeanHead")


def test_num_labels_by_hand_that_disagrees_with_the_data(run_cli, tiny_bert_dir: Path, out: Path, train: str) -> None:
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}", "--model.num_labels=3"))
    assert_refused(result, out, "model.num_labels", "follows the data", "data.label_names")


# ----- output folder -----------------------------------------------------------------------------------------------


def test_output_folder_that_cannot_be_created(run_cli, tiny_bert_dir: Path, train: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"  # a regular file where a folder should be: refused even as root
    blocker.write_text("not a folder\n", encoding="utf-8")
    out = blocker / "out"
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}"))
    assert_refused(result, out, f"cannot write to the output folder {out}", "a file, not a folder", str(blocker))
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "train.tsv"]  # refused before tokenising


def test_disk_too_full_for_the_checkpoints(
    run_cli, tiny_bert_dir: Path, out: Path, train: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=3 * 2**20))
    result = run_cli(*fit_args(tiny_bert_dir, out, f"--data.train_file={train}"))
    assert_refused(
        result, out, f"not enough free disk space in the output folder {out}", "3 files of", "3.15 MB are free"
    )
    assert "--trainer.default_root_dir" in result.stderr
    assert not (out.parent / "cache").exists()  # refused before any tokenising


# ----- checkpoints -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> dict[str, Path]:
    """One real one-step run of the tiny BERT on labels neg/pos: its checkpoint, config and data."""
    root = tmp_path_factory.mktemp("trained")
    train = Path(write_tsv(root / "train.tsv", neg_pos_rows(24)))
    main([*fit_args(tiny_bert_dir, root / "run", f"--data.train_file={train}"), "--trainer.logger=false"])
    return {"ckpt": root / "run" / "checkpoints" / "last.ckpt", "config": root / "run" / "config.yaml", "data": train}


def altered(trained: dict[str, Path], path: Path, **hparams: object) -> Path:
    """A copy of the trained checkpoint whose saved hyperparameters say it was trained otherwise."""
    checkpoint = torch.load(trained["ckpt"], weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, path)
    return path


def eval_args(command: str, trained: dict[str, Path], ckpt: Path, out: Path) -> list[str]:
    """``command`` from the trained run's config and ``ckpt``, on its data; predictions to ``out/predictions.csv``."""
    split = {"predict": "predict", "test": "test"}.get(command, "val")
    return cli_args(out, f"--ckpt_path={ckpt}", f"--prediction.output_file={out / 'predictions.csv'}",
                    command=command, configs=[trained["config"]], cache_dir=out.parent / "cache",
                    **{split: trained["data"]})  # fmt: skip


@pytest.mark.parametrize("command", ["test", "predict", "validate", "fit"])
def test_checkpoint_from_another_label_set(
    run_cli, trained: dict[str, Path], out: Path, tmp_path: Path, command
) -> None:
    other = altered(trained, tmp_path / "other.ckpt", label_names=["a", "b", "c"], num_labels=3)
    args = eval_args(command, trained, other, out)
    if command == "fit":
        args = [a for a in args if not a.startswith("--prediction")]
    result = run_cli(*args)
    assert_refused(
        result,
        out,
        f"checkpoint {other} does not match the config",
        "num_labels: checkpoint 3, config 2",
        "label_names: checkpoint ['a', 'b', 'c'], config ['neg', 'pos']",
        "to start a new run" if command == "fit" else "bertft.load(",
    )


def test_checkpoint_from_another_encoder_head_or_task(
    run_cli, trained: dict[str, Path], out: Path, tmp_path: Path, tiny_distilbert_dir: Path
) -> None:
    run = tmp_path / "other-run"  # laid out as a run: the message points at its own config.yaml
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(trained["config"].read_text(encoding="utf-8"), encoding="utf-8")
    other = altered(
        trained,
        run / "checkpoints" / "last.ckpt",
        encoder=str(tiny_distilbert_dir),
        head={"class_path": "bertft.heads.builtin.CLSHead", "init_args": {"dropout": 0.1, "hidden_dim": None}},
        task="multilabel",
    )
    result = run_cli(
        *eval_args("test", trained, other, out), "--model.head=bertft.heads.MeanHead", "--model.task=regression"
    )
    assert_refused(
        result,
        out,
        f"encoder: checkpoint '{tiny_distilbert_dir}', config '",
        "head: checkpoint 'bertft.heads.builtin.CLSHead(dropout=0.1, hidden_dim=None)', config 'bertft.heads.MeanHead(",
        "task: checkpoint 'multilabel', config 'regression'",
        f"--config {run / 'config.yaml'}",
    )


def test_options_left_at_their_defaults_come_from_the_checkpoint(run_cli, trained: dict[str, Path], out: Path) -> None:
    """No config at all: encoder, head and labels are the checkpoint's (LightningCLI's own behaviour), so it tests."""
    args = cli_args(out, f"--ckpt_path={trained['ckpt']}", command="test", test=trained["data"], quoting=False,
                    logger=False, cache_dir=out.parent / "cache")  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]


def test_encoder_spelt_two_ways_is_the_same_encoder(
    run_cli, trained: dict[str, Path], out: Path, tmp_path: Path, tiny_bert_dir: Path, tiny_distilbert_dir: Path
) -> None:
    assert not checkpoint_mismatches({"encoder": "minilm"}, {"encoder": resolve_encoder("minilm")})
    assert not checkpoint_mismatches({"encoder": "MiniLM"}, {"encoder": resolve_encoder("minilm") + "/"})
    assert checkpoint_mismatches({"encoder": str(tiny_bert_dir)}, {"encoder": str(tiny_distilbert_dir)})
    spelt = f"{tiny_bert_dir.parent}/../{tiny_bert_dir.parent.name}/./{tiny_bert_dir.name}"
    same = altered(trained, tmp_path / "same.ckpt", encoder=spelt)
    result = run_cli(*eval_args("test", trained, same, out))
    assert result.returncode == 0, result.stderr[-3000:]


def test_missing_or_truncated_checkpoint(run_cli, trained: dict[str, Path], out: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    assert_refused(run_cli(*eval_args("test", trained, missing, out)), out, str(missing), "not found")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:4096])
    assert_refused(run_cli(*eval_args("test", trained, truncated, out)), out, str(truncated), "truncated")


class _RunsCode:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def crafted_checkpoint(trained: dict[str, Path], path: Path, marker: Path) -> Path:
    """The trained checkpoint with an object hidden in its hyperparameters that runs code when unpickled."""
    checkpoint = torch.load(trained["ckpt"], weights_only=True)
    checkpoint["hyper_parameters"]["note"] = _RunsCode(marker)
    torch.save(checkpoint, path)
    return path


def test_crafted_checkpoint_is_refused_without_running_code(
    run_cli, trained: dict[str, Path], out: Path, tmp_path: Path
) -> None:
    # The file really runs code when unpickled the unsafe way ...
    probe = tmp_path / "probe-marker"
    torch.load(crafted_checkpoint(trained, tmp_path / "probe.ckpt", probe), weights_only=False)
    assert probe.exists()
    # ... and never through bertft.
    marker = tmp_path / "MARKER"
    crafted = crafted_checkpoint(trained, tmp_path / "crafted.ckpt", marker)
    for command in ("test", "predict", "validate", "fit"):
        result = run_cli(*eval_args(command, trained, crafted, out))
        assert_refused(
            result, out, f"refused to unpickle checkpoint {crafted}", "exec", "Only load checkpoints you trust"
        )
    result = run_cli("export", f"--ckpt_path={crafted}", f"--output_dir={out / 'export'}")
    assert_refused(result, out, f"refused to unpickle checkpoint {crafted}")
    for load in (bertft.load, bertft.Predictor.from_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match="refused to unpickle"):
            load(crafted)
    assert not marker.exists()


def test_weights_only_false_is_refused(run_cli, trained: dict[str, Path], out: Path) -> None:
    result = run_cli(*eval_args("test", trained, trained["ckpt"], out), "--weights_only=false")
    assert_refused(result, out, "weights_only")


def test_matching_checkpoint_predicts_and_resumes(
    run_cli, trained: dict[str, Path], out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checks refuse only what differs: the run's own checkpoint and config predict, and resume (weights_only)."""
    result = run_cli(*eval_args("predict", trained, trained["ckpt"], out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "predictions.csv").stat().st_size > 0
    resumed = out / "resumed"
    args = [a for a in eval_args("fit", trained, trained["ckpt"], resumed) if not a.startswith("--prediction")]
    with caplog.at_level(logging.INFO):
        result = run_cli(*args, "--trainer.max_steps=2", "--trainer.logger=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(f"Restoring states from the checkpoint path at {trained['ckpt']}" in m for m in caplog.messages)
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_label_never_seen_in_training_at_test_time(
    run_cli, trained: dict[str, Path], out: Path, tmp_path: Path
) -> None:
    test = write_tsv(tmp_path / "test.tsv", [("a fine film", "pos"), ("a so-so film", "meh")])
    result = run_cli(*eval_args("test", trained, trained["ckpt"], out), f"--data.test_file={test}")
    assert_refused(result, out, str(test), "line 3", "'meh'", "['neg', 'pos']")


def test_bad_predict_file_writes_no_predictions(run_cli, trained: dict[str, Path], out: Path, tmp_path: Path) -> None:
    ragged = tmp_path / "predict.tsv"
    ragged.write_text("sentence\na fine film\na so-so\tfilm\n", encoding="utf-8")
    result = run_cli(*eval_args("predict", trained, trained["ckpt"], out), f"--data.predict_file={ragged}")
    assert_refused(result, out, str(ragged), "line 3")
