"""The docs stay true: the spec reference is the schema's own output, and the README's commands exist."""

from __future__ import annotations

from loraflow.spec_docs import markdown_table
from tests.conftest import REPO


def test_spec_reference_matches_schema() -> None:
    assert markdown_table() in (REPO / "docs" / "spec.md").read_text(), "run: loraflow spec keys >> docs/spec.md"


def test_readme_opens_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme.index("make demo") < 600 and readme.index("make test") < 600
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_doc_linked_from_readme_exists() -> None:
    import re

    readme = (REPO / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)]+)\)", readme):
        assert (REPO / link).is_file(), link
