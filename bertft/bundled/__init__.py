"""Data that ships inside the package, and the ``bundled://`` paths that name it portably.

A config that says ``train_file: bundled://sst2/train.tsv`` works wherever bertft is installed, because the path is
resolved against this folder rather than the current directory. See ``README.md`` here for sources and citations.
"""

from __future__ import annotations

from pathlib import Path

#: Prefix of a path that names a file shipped in this package.
BUNDLED_SCHEME = "bundled://"

BUNDLED_DIR = Path(__file__).resolve().parent


def resolve_path(path: str) -> str:
    """Turns ``bundled://sst2/train.tsv`` into the file inside the installed package; other paths pass unchanged.

    Args:
        path: A ``bundled://`` path or an ordinary file path.

    Returns:
        A filesystem path. It is not checked for existence here: the reader reports a missing file with context.

    Raises:
        ValueError: A ``bundled://`` path that tries to leave the bundled folder.
    """
    if not path.startswith(BUNDLED_SCHEME):
        return path
    relative = path[len(BUNDLED_SCHEME) :].lstrip("/")
    if ".." in Path(relative).parts:
        raise ValueError(f"{path!r}: a bundled path may not contain '..'; bundled files are {bundled_files()}")
    return str(BUNDLED_DIR / relative)


def bundled_files() -> list[str]:
    """Every data file shipped in the package, as ``bundled://`` paths (used in error messages and docs)."""
    suffixes = {".tsv", ".csv", ".jsonl", ".parquet", ".txt"}
    return sorted(
        BUNDLED_SCHEME + p.relative_to(BUNDLED_DIR).as_posix()
        for p in BUNDLED_DIR.rglob("*")
        if p.is_file() and p.suffix in suffixes
    )
