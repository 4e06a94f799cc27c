"""MkDocs hooks: publish files that live outside docs/ where the repository keeps them.

The notebooks stay in notebooks/ (the tests execute them there), BENCHMARKS.md and RESULTS.md at the top (the
benchmark scripts write them), so the site takes them from there rather than from copies or symlinks. The guides link
to them by their place in the repository (``../../RESULTS.md`` from docs/guides/), which is right when the Markdown is
read on its own; :func:`on_page_markdown` points those links at the published pages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = [
    "BENCHMARKS.md",
    "RESULTS.md",
    "benchmarks/serve_load.png",  # BENCHMARKS.md's picture, where the benchmark writes it
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


LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Points repository paths at the site: links to a file of ``OUTSIDE`` at its page, links from one into docs/.

    ``../../RESULTS.md`` in a guide becomes the results page; ``docs/results/x.png`` in RESULTS.md becomes
    ``results/x.png``, where the site publishes docs/.
    """
    here = Path(page.file.abs_src_path).parent
    published_from = Path(page.file.src_uri).parent

    def to_site(match: re.Match[str]) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        if "://" in target:
            return match.group(0)
        path = (here / target).resolve()
        docs = ROOT / "docs"
        if path.is_relative_to(docs) and not here.is_relative_to(docs):
            # RESULTS.md's `docs/results/x.png`: the site publishes docs/ at its root.
            return f"]({os.path.relpath(path.relative_to(docs), published_from).replace(os.sep, '/')}{anchor})"
        if not path.is_relative_to(ROOT) or path.relative_to(ROOT).as_posix() not in OUTSIDE:
            return match.group(0)
        return f"]({os.path.relpath(path.relative_to(ROOT), published_from).replace(os.sep, '/')}{anchor})"

    return LINK.sub(to_site, markdown)
