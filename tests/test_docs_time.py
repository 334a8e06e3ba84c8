"""docs/time-and-windows.md cannot go stale: its doctest examples (event time from an
expression, with_time, union after it) run and print what the page says."""

from __future__ import annotations

from tests.doc_pages import ROOT, python_blocks, run_examples

DOC = ROOT / "docs" / "time-and-windows.md"


def test_examples_print_what_the_page_says():
    results, report = run_examples(DOC)
    assert results.attempted >= 15
    assert results.failed == 0, report


def test_with_time_and_time_expressions_have_checked_examples():
    code = "\n".join(code for _, code in python_blocks(DOC.read_text()) if ">>>" in code)
    assert ".with_time(" in code
    assert "time=rh.col(" in code
