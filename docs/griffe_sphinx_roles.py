"""A griffe extension for the API reference: bertft's docstrings written for ``--help`` and Sphinx, shown as Markdown.

bertft's Google-style docstrings name other objects the Sphinx way (``:class:`~bertft.heads.MeanHead```), which
``python -m bertft fit --help`` prints as written. In the reference they become inline code (```MeanHead```), the
``~`` keeping only the last name as Sphinx does. Doctest lines (``>>>`` and ``...``) become a fenced ``pycon`` block
instead of Markdown quotes.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
# A ">>>" line and what follows it at the same indentation (continuations and expected output) up to a blank line.
DOCTEST = re.compile(r"^( *)(>>> .*(?:\n\1\S.*)*)$", re.MULTILINE)


def _fenced(match: re.Match[str]) -> str:
    indent = match.group(1)
    return f"{indent}```pycon\n{indent}{match.group(2)}\n{indent}```"


def _as_code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(Extension):
    """Rewrites Sphinx roles and doctest lines in every loaded object's docstring."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = DOCTEST.sub(_fenced, ROLE.sub(_as_code, obj.docstring.value))
