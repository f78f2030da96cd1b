"""The house rules of issue 20 that a reader relies on: every folder says what it owns, in two lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "loraflow"


def test_every_folder_says_in_two_lines_what_it_owns() -> None:
    for init in sorted(SRC.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        where = init.relative_to(SRC.parent)
        assert doc, f"{where}: no docstring"
        assert 1 <= len(doc.splitlines()) <= 2, f"{where}: {len(doc.splitlines())} lines"
