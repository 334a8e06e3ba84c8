"""docs/stream-tools.md cannot go stale: its examples run and print what the page shows."""

from __future__ import annotations

import pytest

from tests.doc_pages import ROOT, python_blocks, run_examples, unchecked_blocks

DOC = ROOT / "docs" / "stream-tools.md"
TEXT = DOC.read_text()


def test_examples_print_what_the_page_says():
    results, report = run_examples(DOC)
    assert results.attempted >= 30
    assert results.failed == 0, report


def test_every_example_block_is_checked():
    """Python blocks that only show a signature hold no ``>>>``: the rest must all run."""
    signatures = [line for line, code in python_blocks(TEXT) if code.count("\n") == 1 and "(" in code]
    assert sorted(set(unchecked_blocks(TEXT)) - set(signatures)) == []


@pytest.mark.parametrize(
    "call", [".dedup(within=", ".repeats()", ".changes(", ".top_n(2, by=", ".top_n(1, by=", "allowed_lateness="]
)
def test_each_tool_has_a_checked_example(call):
    code = "\n".join(code for _, code in python_blocks(TEXT) if ">>>" in code)
    assert call in code


def test_the_readme_links_the_page():
    assert "[stream tools](docs/stream-tools.md)" in (ROOT / "README.md").read_text()
