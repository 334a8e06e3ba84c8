"""Running a docs page's examples: every ```python block with ``>>>`` is a doctest.

The blocks of a page run in document order in one namespace, as a reader would run them (an
early block defines what later ones use), and each must print exactly what the page shows.
"""

from __future__ import annotations

import doctest
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number of the block's first line, code)`` of each ```python block."""
    return [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    ]


def unchecked_blocks(text: str) -> list[int]:
    """Lines of python blocks without ``>>>``: they would not run, so could go wrong unseen."""
    return [line for line, code in python_blocks(text) if ">>>" not in code]


def run_examples(page: Path) -> tuple[doctest.TestResults, str]:
    """Run ``page``'s examples in order; the results and the report of failures."""
    text = page.read_text()
    name = page.relative_to(ROOT).as_posix()
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.REPORT_NDIFF)
    report = io.StringIO()
    globs: dict[str, object] = {"__name__": name.replace("/", "_").removesuffix(".md")}
    for line, code in python_blocks(text):
        if ">>>" not in code:
            continue
        # lineno is 0-based in doctest: report lines as they are in the page
        test = parser.get_doctest(code, globs, f"{name}:{line}", str(page), line - 1)
        runner.run(test, out=report.write, clear_globs=False)
        globs = test.globs  # the next block sees what this one defined
    return runner.summarize(verbose=False), report.getvalue()
