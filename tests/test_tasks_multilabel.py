"""Multi-label classification on a set derived from CoNLL-2003: the committed files, the reader, CLI fit -> predict."""

from __future__ import annotations

import json
from pathlib import Path

from bertft.cli import main
from bertft.data import ReadOptions, read_table
from bertft.data.labels import parse_labels
from bertft.data.make_multilabel import make, sentence_labels

from .helpers import BUNDLED, CONFIGS, bundled_lines, cli_args, write_lines

MULTILABEL = BUNDLED / "conll2003" / "multilabel"
TYPES = ["LOC", "MISC", "ORG", "PER"]


def test_committed_files_are_what_the_script_makes(tmp_path: Path) -> None:
    counts = make(tmp_path)
    assert counts == {"train": 14041, "dev": 3250, "test": 3453}  # one row per CoNLL sentence
    for split in counts:
        assert (tmp_path / f"{split}.tsv").read_bytes() == (MULTILABEL / f"{split}.tsv").read_bytes()


def test_labels_parse_as_sets_of_entity_types() -> None:
    assert sentence_labels(["B-PER", "I-PER", "O", "B-LOC", "B-PER"]) == ["LOC", "PER"]
    assert sentence_labels(["O", "O"]) == []
    table = read_table(str(MULTILABEL / "train.tsv"), ReadOptions(quoting=False))
    labels = parse_labels(table, "labels", "multilabel", "|")
    assert {name for names in labels for name in names} == set(TYPES)
    empty = sum(not names for names in labels)
    assert 0.15 < empty / len(labels) < 0.25  # sentences without entities stay, as negatives (2,909 of 14,041)


def test_fit_then_predict_through_the_cli(tmp_path: Path, tiny_bert_dir: Path) -> None:
    lines = bundled_lines("conll2003/multilabel/train.tsv")
    train = write_lines(tmp_path / "train.tsv", lines[:201])
    val = write_lines(tmp_path / "val.tsv", [lines[0], *lines[201:241]])
    main(cli_args(tmp_path / "run", configs=[CONFIGS / "conll2003_multilabel.yaml"], encoder=tiny_bert_dir,
                  train=train, val=val, test=val, max_steps=4, logger=False, cache_dir=tmp_path / "cache"))  # fmt: skip
    out = tmp_path / "preds.jsonl"
    config, ckpt = next(tmp_path.rglob("config.yaml")), next(tmp_path.rglob("last.ckpt"))
    main(cli_args(tmp_path / "run", f"--ckpt_path={ckpt}", f"--prediction.output_file={out}", command="predict",
                  configs=[config], predict=val, logger=False, cache_dir=tmp_path / "cache"))  # fmt: skip
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["sentence"] for r in rows] == [line.split("\t")[0] for line in lines[201:241]]
    for r in rows:
        assert r["prediction"] == [t for t in TYPES if r[f"prob_{t}"] > 0.5]  # every label above the threshold
