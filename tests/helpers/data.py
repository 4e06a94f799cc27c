"""Real data for the tests: SST-2 rows, files written from rows or slices of bundled files, CoNLL tables."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bertft.data import TokenCollator
from bertft.data.conll import TAGS, TOKENS
from bertft.data.files import Table
from bertft.data.tokens import WORD_INDEX
from bertft.encoder import resolve_encoder

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
BUNDLED = ROOT / "bertft" / "bundled"
MINILM = resolve_encoder("minilm")  # the packaged all-MiniLM-L6-v2's folder: real weights, offline


def sst2_rows(split: str, n: int | None = None, *, label: Callable[[str], Any] = str) -> list[tuple[str, Any]]:
    """The first ``n`` (sentence, label) rows of a bundled SST-2 split (``train``, ``dev`` or ``test``), real data.

    Args:
        split: The file's name without ``.tsv``.
        n: How many rows; all of them when None.
        label: Applied to each label as the file spells it (``"0"``, ``"1"``): ``int`` for tensors.
    """
    with open(BUNDLED / "sst2" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(sentence, label(y)) for sentence, y in itertools.islice(reader, n)]


def write_tsv(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = ("sentence", "label")) -> str:
    """Writes a tab-separated file with a header line, unquoted (read it with ``quoting=False``).

    Returns:
        The path as a string, as bertft's data options take it.
    """
    write_lines(path, ["\t".join(header), *("\t".join(row) for row in rows)])
    return str(path)


def write_lines(path: Path, lines: Sequence[str]) -> str:
    """Writes ``lines`` to ``path``, each ended by a newline (a slice of a bundled file, say); returns the path."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def bundled_lines(name: str) -> list[str]:
    """The lines of a file under ``bertft/bundled`` (``stsb/sts-dev.csv``, ...), to cut a small slice from."""
    return (BUNDLED / name).read_text(encoding="utf-8").splitlines()


def write_conll(path: Path, table: Table, rows: Sequence[int], tags: bool = True) -> str:
    """Writes sentences ``rows`` of a token table in CoNLL layout (``word tag`` lines, a blank line after each
    sentence); ``tags=False`` writes the words alone, as a file to predict. Returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        for i in rows:
            for word, tag in zip(table.frame[TOKENS][i], table.frame[TAGS][i], strict=True):
                f.write(f"{word} {tag}\n" if tags else f"{word}\n")
            f.write("\n")
    return str(path)


def subset(table: Table, rows: list[int]) -> Table:
    """The sentences ``rows`` of a token table, numbered from 0 again."""
    return Table(table.path, table.frame.iloc[rows].reset_index(drop=True), [table.lines[i] for i in rows])


def word_predictions(dataset, collator: TokenCollator, label_names: list[str]) -> dict[int, dict[int, str]]:
    """Reads each window's labels back where the model's predictions are read: the round trip under test.

    Returns:
        For each sentence (row), the label read for each of its words; a word read from two windows fails.
    """
    found: dict[int, dict[int, str]] = {}
    for example in dataset:
        batch = collator([example])
        read = batch[WORD_INDEX][0] >= 0
        for w, label in zip(batch[WORD_INDEX][0][read].tolist(), batch["labels"][0][read].tolist(), strict=True):
            assert w not in found.setdefault(example["row"], {}), "a word is read from two windows"
            found[example["row"]][w] = label_names[label]
    return found
