"""Multi-label classification on a set derived from CoNLL-2003: the committed files, the reader, CLI fit -> predict."""

from __future__ import annotations

import json
from pathlib import Path

from bertft.data.make_multilabel import make, sentence_labels
from bertft.cli import main
from bertft.data import ReadOptions, read_table
from bertft.data.labels import parse_labels

ROOT = Path(__file__).resolve().parents[1]
MULTILABEL = ROOT / "bertft" / "bundled" / "conll2003" / "multilabel"
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
    lines = (MULTILABEL / "train.tsv").read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(lines[:201]) + "\n", encoding="utf-8")
    val = tmp_path / "val.tsv"
    val.write_text("\n".join([lines[0], *lines[201:241]]) + "\n", encoding="utf-8")
    main(
        [
            "fit",
            f"--config={ROOT / 'configs' / 'conll2003_multilabel.yaml'}",
            f"--model.encoder={tiny_bert_dir}",
            f"--data.train_file={train}",
            f"--data.val_file={val}",
            f"--data.test_file={val}",
            "--trainer.max_steps=4",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--data.cache_dir={tmp_path / 'cache'}",
        ]
    )
    out = tmp_path / "preds.jsonl"
    config, ckpt = next(tmp_path.rglob("config.yaml")), next(tmp_path.rglob("last.ckpt"))
    main(["predict", f"--config={config}", f"--ckpt_path={ckpt}", f"--data.predict_file={val}",
          f"--prediction.output_file={out}", "--trainer.logger=false"])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["sentence"] for r in rows] == [line.split("\t")[0] for line in lines[201:241]]
    for r in rows:
        assert r["prediction"] == [t for t in TYPES if r[f"prob_{t}"] > 0.5]  # every label above the threshold
