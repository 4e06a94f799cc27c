"""Derives a multi-label sentence classification set from the bundled CoNLL-2003 NER files.

Each sentence is labelled with the set of entity types it mentions (``PER``, ``LOC``, ``ORG``, ``MISC``), read from
its gold IOB2 tags. A sentence without any entity keeps an empty label set: it stays in the data as a negative
example (about a fifth of CoNLL's sentences), so the model must also learn to predict nothing. Splits are kept as
they are (train / dev / test), sentences in file order, words joined with single spaces.

Output: ``conll2003/multilabel/{train,dev,test}.tsv``, header ``sentence<TAB>labels``, labels joined by ``|`` in
alphabetical order (for example ``LOC|PER``), no quoting (the text contains ``"``).

Run:  python -m bertft.data.make_multilabel            (rewrites the bundled files)
      python -m bertft.data.make_multilabel --out DIR  (writes elsewhere)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bertft.bundled import BUNDLED_DIR
from bertft.data.conll import TAGS, TOKENS, read_token_file
from bertft.ner import entities

SPLITS = ("train", "dev", "test")
DELIMITER = "|"


def sentence_labels(tags: list[str]) -> list[str]:
    """The sorted set of entity types in one sentence's IOB tags (empty when it mentions none)."""
    return sorted({entity.type for entity in entities(tags)})


def make(out_dir: Path) -> dict[str, int]:
    """Writes the three splits to ``out_dir`` and returns the number of sentences in each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        table = read_token_file(f"bundled://conll2003/{split}.txt")
        lines = ["sentence\tlabels"]
        for words, tags in zip(table.frame[TOKENS], table.frame[TAGS], strict=True):
            text = " ".join(words)
            if "\t" in text:  # never in CoNLL-2003; it would break the TSV
                raise ValueError(f"a tab inside a sentence of {split}: {text!r}")
            lines.append(f"{text}\t{DELIMITER.join(sentence_labels(tags))}")
        (out_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[split] = len(lines) - 1
    return counts


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR / "conll2003" / "multilabel")
    args = parser.parse_args(argv)
    for split, n in make(args.out).items():
        print(f"{args.out / (split + '.tsv')}: {n} sentences")


if __name__ == "__main__":
    main()
