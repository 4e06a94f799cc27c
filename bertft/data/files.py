"""Reading local CSV/TSV/JSONL/Parquet files into tables, with errors that say where and what to do.

CSV and TSV are parsed with Python's :mod:`csv` rather than ``pandas.read_csv``: it keeps every field as text (so
``"NA"`` and ``"null"`` stay words), reports the line of every record, and rejects ragged rows that pandas would
silently pad with ``NaN`` or turn into an index.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from bertft.bundled import BUNDLED_SCHEME, bundled_files, resolve_path

FileFormat = Literal["auto", "csv", "tsv", "jsonl", "parquet"]

_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class DataError(ValueError):
    """A data file that cannot be used as configured; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class ReadOptions:
    """How to parse a text table. Field meanings are those of :class:`~bertft.data.TextDataModule`."""

    file_format: FileFormat = "auto"
    delimiter: str | None = None
    quoting: bool = True
    header: bool = True
    column_names: tuple[str, ...] | None = None
    encoding: str = "utf-8"
    extra_fields: Literal["error", "ignore"] = "error"


@dataclass
class Table:
    """The records of one file.

    Attributes:
        path: The file as the user named it (``bundled://`` kept), for messages.
        frame: One row per record, original column names; CSV/TSV values are ``str``.
        lines: For each row, the 1-based line where it starts in the file (header counted), or the 1-based row
            number for Parquet, which has no lines.
        unit: ``"line"`` or ``"row"``: what :attr:`lines` counts.
    """

    path: str
    frame: pd.DataFrame
    lines: list[int]
    unit: str = "line"

    def where(self, i: int) -> str:
        """``"data.csv, line 7"`` for row ``i`` of :attr:`frame`."""
        return f"{self.path}, {self.unit} {self.lines[i]}"

    def require(self, column: str, purpose: str) -> None:
        """Raises :class:`DataError` listing the columns there are when ``column`` is not one of them."""
        if column not in self.frame.columns:
            have = ", ".join(repr(str(c)) for c in self.frame.columns)
            raise DataError(
                f"{self.path} has no column {column!r} (the {purpose}). Its columns are: {have}. Set the matching "
                "`*_column` option to one of these, or, for a file without a header row, set `header: false` and "
                "name the columns with `column_names`."
            )


def file_format(path: str, requested: FileFormat) -> str:
    """The format to parse ``path`` with: ``requested``, or the one its extension implies when ``"auto"``."""
    if requested != "auto":
        return requested
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise DataError(
            f"cannot tell the format of {path} from its extension {suffix!r}: set `file_format` to one of csv, tsv, "
            "jsonl or parquet."
        )
    return _EXTENSIONS[suffix]


def read_bytes(path: str) -> bytes:
    """The file's bytes, with a helpful error when it does not exist or holds nothing."""
    real = Path(resolve_path(path))
    if not real.is_file():
        hint = f" Bundled files are: {', '.join(bundled_files())}." if path.startswith(BUNDLED_SCHEME) else ""
        raise DataError(f"data file {path} does not exist (looked for {real.resolve()}). Check the path.{hint}")
    data = real.read_bytes()
    if not data.strip():
        raise DataError(f"data file {path} is empty: it needs a header row and at least one data row.")
    return data


def read_table(path: str, options: ReadOptions, data: bytes | None = None) -> Table:
    """Reads and validates one file.

    Args:
        path: File path, or a ``bundled://`` path.
        options: How to parse it.
        data: The file's bytes when the caller has already read them (to hash them).

    Returns:
        The records, with their line numbers.

    Raises:
        DataError: Missing, empty, undecodable or ragged file, or a header-less file without column names.
    """
    fmt = file_format(path, options.file_format)
    data = read_bytes(path) if data is None else data
    if fmt == "parquet":
        frame = pd.read_parquet(io.BytesIO(data))
        if options.column_names:
            frame.columns = list(options.column_names)
        table = Table(path, frame.reset_index(drop=True), list(range(1, len(frame) + 1)), unit="row")
    else:
        text = _decode(path, data, options.encoding)
        table = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, fmt, options)
    if table.frame.empty:
        raise DataError(f"data file {path} has no data rows (only a header, or blank lines). Add examples to it.")
    return table


def _decode(path: str, data: bytes, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        bad = data[err.start : err.end].hex(" ")
        raise DataError(
            f"{path} is not valid {encoding}: line {line}, byte {column} (0x{bad}) cannot be decoded. Save the file "
            f"as {encoding}, or set the `encoding` option to the file's real encoding (for example `encoding: "
            "latin-1` or `cp1252`)."
        ) from None
    except LookupError:
        raise DataError(f"unknown `encoding` {encoding!r} for {path}: use a Python codec name such as utf-8.") from None
    return text.removeprefix("\ufeff")  # a byte-order mark would otherwise become part of the first column's name


def _read_delimited(path: str, text: str, fmt: str, options: ReadOptions) -> Table:
    delimiter = options.delimiter or ("\t" if fmt == "tsv" else ",")
    quote_hint = (
        ' If the text contains quote characters ("), set `quoting: false`.'
        if options.quoting
        else f" Check that `delimiter` ({delimiter!r}) is the file's separator."
    )
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if options.quoting else csv.QUOTE_NONE,
        strict=options.quoting,  # a stray quote inside a quoted field is an error, not silently kept
    )
    names: list[str] | None = list(options.column_names) if options.column_names else None
    header_pending = options.header
    rows: list[list[str]] = []
    lines: list[int] = []
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record:  # a blank line is not a record
                continue
            if header_pending:
                header_pending = False
                if names is None:
                    names = record
                    _check_header(path, names)
                continue  # with `column_names` given as well, they replace the file's own header
            if names is None:
                names = [str(i) for i in range(len(record))]
            if len(record) > len(names) and options.extra_fields == "ignore":
                record = record[: len(names)]  # e.g. STS-B: ~500 lines carry two trailing source fields
            if len(record) != len(names):
                extra_hint = (
                    " If the file's rows may carry extra trailing fields, set `extra_fields: ignore`."
                    if len(record) > len(names)
                    else ""
                )
                raise DataError(
                    f"{path}, line {start}: expected {len(names)} fields ({', '.join(map(repr, names))}) but found "
                    f"{len(record)}. Fix or remove that row.{extra_hint}{quote_hint}"
                )
            rows.append(record)
            lines.append(start)
    except csv.Error as err:
        start = previous_end + 1
        span = f"line {start}" + (f" (the record runs on to line {reader.line_num})" if reader.line_num > start else "")
        raise DataError(f"{path}, {span}: cannot be parsed ({err}).{quote_hint}") from None
    frame = pd.DataFrame(rows, columns=names or [], dtype=object)
    return Table(path, frame, lines)


def _check_header(path: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(
            f"{path}, line 1: the header names columns {duplicates} more than once. Rename them, or set "
            "`column_names` to name the columns yourself."
        )


def jsonl_records(path: str, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line number, record)`` for each non-blank line of a JSON Lines file's text.

    Raises:
        DataError: A line that is not valid JSON, or not a JSON object; the error names the file and line.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {number}: not valid JSON ({err.msg} at character {err.colno}). Each line of a JSONL "
                "file must be one JSON object."
            ) from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, found {type(record).__name__}.")
        yield number, record


def _read_jsonl(path: str, text: str) -> Table:
    numbered = list(jsonl_records(path, text))
    records = [record for _, record in numbered]
    return Table(path, pd.DataFrame.from_records(records), [number for number, _ in numbered])


def is_missing(value: Any) -> bool:
    """Whether a cell holds no value: ``None`` or NaN (a JSONL record without the key)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
