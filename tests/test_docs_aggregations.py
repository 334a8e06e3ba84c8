"""docs/aggregations.md cannot go stale: its examples run, and every aggregation has one."""

from __future__ import annotations

import pytest

import rheon as rh
from tests.doc_pages import ROOT, python_blocks, run_examples, unchecked_blocks

DOC = ROOT / "docs" / "aggregations.md"
TEXT = DOC.read_text()


def test_examples_print_what_the_page_says():
    assert not unchecked_blocks(TEXT), f"python blocks without >>> at lines {unchecked_blocks(TEXT)}"
    results, report = run_examples(DOC)
    assert results.attempted >= 10
    assert results.failed == 0, report


AGGREGATIONS = [
    "count", "sum", "min", "max", "mean", "count_distinct", "quantile", "median", "var", "std",
    "first", "last", "arg_max", "arg_min", "collect", "approx_count_distinct", "approx_quantile", "agg_fn",
]  # fmt: skip


def test_the_list_is_every_aggregation_rheon_exports():
    exported = {name for name in rh.__all__ if name in AGGREGATIONS}
    assert exported == set(AGGREGATIONS)


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_every_aggregation_is_in_the_table(name):
    assert f"`rh.{name}(" in TEXT


@pytest.mark.parametrize(
    "name",
    [
        "quantile", "median", "var", "std", "first", "last", "arg_max", "arg_min", "collect",
        "approx_count_distinct", "approx_quantile", "agg_fn",
    ],
)  # fmt: skip
def test_every_new_aggregation_has_a_checked_example(name):
    code = "\n".join(code for _, code in python_blocks(TEXT))
    assert f"rh.{name}(" in code


def test_a_user_defined_aggregate_has_a_checked_example():
    code = "\n".join(code for _, code in python_blocks(TEXT))
    assert "(rh.Aggregate):" in code


def test_where_has_a_checked_example():
    code = "\n".join(code for _, code in python_blocks(TEXT))
    assert "where=rh.col(" in code
