"""docs/cep.md cannot go stale: every ```python block with ``>>>`` runs as a doctest.

The blocks run in document order in one namespace, as a reader would run them (the quick start
imports ``rh`` and ``cep``; "Reading the examples" defines the ``find`` helper the later blocks
use), and each must print exactly what the page shows.
"""

from __future__ import annotations

import re

import pytest

import rheon.cep as cep_module
from tests.doc_pages import ROOT, python_blocks, run_examples, unchecked_blocks

DOC = ROOT / "docs" / "cep.md"
TEXT = DOC.read_text()
DOCTESTS = [(line, code) for line, code in python_blocks(TEXT) if ">>>" in code]


def test_every_python_block_is_checked():
    """A python block without ``>>>`` would not be run, so it could silently go wrong."""
    assert not unchecked_blocks(TEXT), f"docs/cep.md: python blocks without >>> at lines {unchecked_blocks(TEXT)}"
    assert len(DOCTESTS) >= 25


def test_examples_print_what_the_page_says():
    results, report = run_examples(DOC)
    assert results.attempted > 100
    assert results.failed == 0, report


def _checked_code() -> str:
    return "\n".join(code for _, code in DOCTESTS)


@pytest.mark.parametrize(
    "method",
    sorted(
        name
        for name, value in vars(cep_module.Pattern).items()
        if callable(value) and not name.startswith("_") and name != "check"
    ),
)
def test_every_pattern_method_has_a_checked_example(method):
    assert f".{method}(" in _checked_code(), f"docs/cep.md shows no checked example of Pattern.{method}()"


@pytest.mark.parametrize(
    "strategy",
    ["skip_past_last_event", "skip_to_next", "skip_to_first:", "skip_to_last:", "no_skip"],
)
def test_every_after_match_strategy_has_a_checked_example(strategy):
    assert f'"{strategy}' in _checked_code()


@pytest.mark.parametrize(
    "construct", ["cep.begin(", ".timed_out()", ".late()", "measures=", 'key_by("user", "device")', "datetime("]
)
def test_other_constructs_have_a_checked_example(construct):
    assert construct in _checked_code()


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_within_the_page_lead_somewhere():
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.*)$", TEXT, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", TEXT)
    assert links
    assert not [link for link in links if link not in anchors], sorted(anchors)


def test_the_page_is_self_contained():
    assert "<!-- EXAMPLES -->" not in TEXT
    for internal in ("../shared", "DESIGN.md"):
        assert internal not in TEXT
