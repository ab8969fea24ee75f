"""Sphinx configuration of volcam's documentation: MyST Markdown pages and an API reference
built by autodoc from the Google-style docstrings (napoleon).

Build with warnings as errors, as CI does::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Nothing is fetched from the network at build time (no intersphinx).
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import volcam  # noqa: E402

project = "volcam"
author = "volcam contributors"
copyright = "volcam contributors"
release = volcam.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors for in-page links ([text](#some-heading)), ::: fences for admonitions
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# autodoc and napoleon: Google sections, members in source order, no duplicate attribute entries
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"volcam {release}"
html_static_path = ["_static"]


# ---------------------------------------------------------------------------------------------
# House style of the docstrings: an indented block after a paragraph is code or a formula
# (``w[b, k] = mean over S of dy/dA[b, k, ...]``), written without reST's ``::``. Shown as a
# literal block, so that it keeps its lines and its ``*`` and ``|`` are not read as markup.

_BULLET = re.compile(r"([-*+]|\d+[.)]|\(\d+\))\s+")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _text_indent(line: str) -> int:
    """Indent of a line's text: after the marker of a list item."""
    m = _BULLET.match(line.lstrip())
    return _indent(line) + (m.end() if m else 0)


def literal_blocks(lines: list[str]) -> list[str]:
    """The docstring lines with every indented block after a paragraph made a literal block."""
    out = list(lines)
    block = None  # indent of the paragraph that opened the literal block we are in
    last = None  # index of the last non-blank line
    first = None  # index of the first line of the paragraph holding ``last``
    for j, line in enumerate(out):
        if not line.strip():
            continue
        indent = _indent(line)
        if block is not None and indent > block:
            last = j
            continue
        block = None
        after_blank = j > 0 and not out[j - 1].strip()
        if after_blank or last is None:
            paragraph_first = j
        else:
            paragraph_first = first
        if last is not None and after_blank:
            base = max(_indent(out[last]), _text_indent(out[first]))
            opener = out[first].lstrip()
            if indent > base and not _BULLET.match(line.lstrip()) and not opener.startswith(".."):
                head = out[last].rstrip()
                if not head.endswith("::"):
                    out[last] = head + (":" if head.endswith(":") else " ::")
                block = _indent(out[last])
                last = j
                continue
        first, last = paragraph_first, j
    return out


def _house_style(app, what, name, obj, options, lines):
    lines[:] = literal_blocks(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _house_style)
