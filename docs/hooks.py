"""MkDocs hooks: publish files that live outside docs/ where the repository keeps them.

The notebooks stay in notebooks/ (the tests execute them there), BENCHMARKS.md and RESULTS.md at the top (the
benchmark scripts write them), so the site takes them from there rather than from copies or symlinks.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = [
    "BENCHMARKS.md",
    "RESULTS.md",
    *(f"notebooks/{p.name}" for p in sorted((ROOT / "notebooks").glob("*.ipynb"))),
]


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the .ipynb files into pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Adds the files of ``OUTSIDE`` to the site, at the same paths as in the repository."""
    for path in OUTSIDE:
        files.append(
            File(path, src_dir=str(ROOT), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls)
        )
    return files
