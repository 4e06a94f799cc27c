"""An on-disk cache of tokenised splits, keyed by everything that decides their content.

Each entry is a ``datasets.Dataset.save_to_disk`` folder plus ``bertft_meta.json``, which records the key, the
facts to report again on reuse (truncated and skipped counts) and a sha256 of every file. Entries are written to a
temporary folder and renamed into place, so a killed run never leaves a half-written entry under the real name, and
an entry whose files do not match their hashes is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset, disable_progress_bars, enable_progress_bars, is_progress_bar_enabled, load_from_disk

log = logging.getLogger(__name__)

#: Bump when the layout of cached datasets changes, so old entries are not read as new ones. 2: sentence pairs always
#: carry token_type_ids (ALBERT's tokenizer left them out).
CACHE_VERSION = 2
META_FILE = "bertft_meta.json"


def default_cache_dir() -> Path:
    """``$BERTFT_CACHE`` if set, else ``~/.cache/bertft``."""
    return Path(os.environ.get("BERTFT_CACHE") or Path.home() / ".cache" / "bertft")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of a JSON-serialisable description of a split."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return sha256_bytes(blob.encode())


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_bytes(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != META_FILE
    }


class SplitCache:
    """Stores and finds tokenised splits under ``root``.

    Args:
        root: The cache folder; created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def entry(self, name: str, key: str) -> Path:
        """The folder for a split: a readable name plus the start of its key."""
        return self.root / "splits" / f"{name}-{key[:24]}"

    def load(self, name: str, key: str) -> tuple[Dataset, dict[str, Any]] | None:
        """The cached split and its metadata, or ``None`` when absent or corrupt (a corrupt entry is removed)."""
        folder = self.entry(name, key)
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / META_FILE).read_text())
            if meta.get("key") != key:
                raise ValueError("key mismatch")
            if _file_hashes(folder) != meta["files"]:
                raise ValueError("file contents differ from their recorded hashes")
            dataset = load_from_disk(str(folder))
            if dataset.num_rows != meta["num_rows"]:
                raise ValueError(f"{dataset.num_rows} rows, expected {meta['num_rows']}")
        except Exception as err:  # noqa: BLE001 - any failure to read an entry means: rebuild it
            log.warning("Tokenised cache %s is unreadable (%s); rebuilding it.", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return dataset, meta

    def get_or_build(
        self, name: str, key: str, build: Callable[[], tuple[Dataset, dict[str, Any]]]
    ) -> tuple[Dataset, dict[str, Any], str]:
        """The cached split, or the result of ``build()``, saved; plus ``"loaded"`` or ``"built"`` to say which."""
        cached = self.load(name, key)
        if cached is not None:
            return *cached, "loaded"
        with quiet_datasets():
            dataset, meta = build()
            self.save(name, key, dataset, meta)
        return dataset, meta, "built"

    def _value_path(self, name: str, key: str) -> Path:
        return self.root / "values" / f"{name}-{key[:24]}.json"

    def load_json(self, name: str, key: str) -> Any | None:
        """A small JSON value stored by :meth:`save_json`, or ``None`` when absent or unreadable.

        For facts about a file that otherwise cost a full read to learn, such as a training file's label classes.
        """
        try:
            stored = json.loads(self._value_path(name, key).read_text())
            return stored["value"] if stored["key"] == key else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_json(self, name: str, key: str, value: Any) -> None:
        """Stores ``value`` atomically (a killed run leaves nothing half-written under the real name)."""
        path = self._value_path(name, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, "value": value}, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache shared by a team must stay readable
            os.replace(tmp, path)
        except OSError as err:  # a read-only cache still works, it only cannot remember
            log.warning("Could not cache %s in %s (%s).", name, path.parent, err)

    def save(self, name: str, key: str, dataset: Dataset, meta: dict[str, Any]) -> Path:
        """Writes a split atomically: into a temporary folder next to the entry, then renamed into place."""
        folder = self.entry(name, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache shared by a team must stay readable once renamed
            dataset.save_to_disk(str(tmp))
            meta = {**meta, "key": key, "num_rows": dataset.num_rows, "files": _file_hashes(tmp)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            if folder.exists():  # left by a crash between checks, or written by a concurrent run: replace it
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            # another process renamed its identical entry into place first; theirs is as good as ours
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hides ``datasets``' progress bars (one per map and save) while building; restores the previous setting."""
    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bars()
