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


def test_no_module_over_450_lines_and_no_function_over_120() -> None:
    """Small modules with one job each; the training loop is the one function read top to bottom."""
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(SRC.parent)
        if len(text.splitlines()) > 450:
            too_long.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
                if length > 120 and f"{where}:{node.name}" != "loraflow/trainer/loop.py:train":
                    too_long.append(f"{where}:{node.name}: {length} lines")
    assert too_long == []
