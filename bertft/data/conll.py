"""Reading token-classification files: CoNLL (``token ... TAG`` lines) or JSONL (``{"tokens": [...], "tags": [...]}``).

A CoNLL file holds one token per line, its tag in the last whitespace-separated field (CoNLL-2003's four-column
``token POS chunk NER`` lines work as they are), and a blank line between sentences. ``-DOCSTART-`` lines mark
documents and are not sentences. A line with a single field is a token without a tag (a file to predict).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bertft.data.files import DataError, Table, jsonl_records, read_bytes

#: Columns of a token-classification table: the words of each sentence and, when labelled, one tag per word.
TOKENS, TAGS = "tokens", "tags"
DOCSTART = "-DOCSTART-"


def read_token_file(path: str, encoding: str = "utf-8", data: bytes | None = None) -> Table:
    """Reads a CoNLL file (any extension but ``.jsonl``) or a JSONL file into a table of sentences.

    Args:
        path: File path, or a ``bundled://`` path.
        encoding: Text encoding.
        data: The file's bytes when the caller has already read them.

    Returns:
        A table with a ``tokens`` column (list of words per sentence) and a ``tags`` column (list of tags, or
        ``None`` for an untagged sentence); ``lines`` holds the line of each sentence's first word.

    Raises:
        DataError: A sentence whose lines mix tagged and untagged tokens, a JSONL record without ``tokens`` or
            with as many tags as words, or a file without sentences.
    """
    data = read_bytes(path) if data is None else data
    try:
        text = data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not valid {encoding} ({err}); set `encoding` to the file's encoding.") from None
    reader = _read_jsonl if Path(path).suffix.lower() in (".jsonl", ".ndjson") else _read_conll
    tokens, tags, lines = reader(path, text)
    if not tokens:
        raise DataError(f"{path} holds no sentences. A CoNLL file has one `token TAG` per line, blank lines between.")
    frame = pd.DataFrame({TOKENS: tokens, TAGS: tags}, dtype=object)
    return Table(path, frame, lines)


def _read_conll(path: str, text: str) -> tuple[list[list[str]], list[list[str] | None], list[int]]:
    sentences: list[list[str]] = []
    sentence_tags: list[list[str] | None] = []
    lines: list[int] = []
    words: list[str] = []
    tags: list[str] = []
    untagged = 0
    start = 0

    def close() -> None:
        nonlocal words, tags, untagged
        if words:
            if 0 < untagged < len(words):
                raise DataError(
                    f"{path}, line {start}: the sentence starting here has {untagged} of {len(words)} tokens without "
                    "a tag. Write `token TAG` on every line of a labelled file, or only tokens in a file to predict."
                )
            sentences.append(words)
            sentence_tags.append(tags if not untagged else None)
            lines.append(start)
        words, tags, untagged = [], [], 0

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == DOCSTART:
            close()
            continue
        if not words:
            start = number
        words.append(fields[0])
        if len(fields) > 1:
            tags.append(fields[-1])
        else:
            untagged += 1
    close()
    return sentences, sentence_tags, lines


def _read_jsonl(path: str, text: str) -> tuple[list[list[str]], list[list[str] | None], list[int]]:
    sentences: list[list[str]] = []
    sentence_tags: list[list[str] | None] = []
    lines: list[int] = []
    for number, record in jsonl_records(path, text):
        words = record.get(TOKENS)
        if not isinstance(words, list) or not words:
            raise DataError(f'{path}, line {number}: expected an object with a non-empty "tokens" list.')
        tags = record.get(TAGS)
        if tags is not None and (not isinstance(tags, list) or len(tags) != len(words)):
            raise DataError(f'{path}, line {number}: "tags" must be a list with one tag per token ({len(words)}).')
        sentences.append([str(w) for w in words])
        sentence_tags.append([str(t) for t in tags] if tags is not None else None)
        lines.append(number)
    return sentences, sentence_tags, lines
