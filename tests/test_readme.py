"""The README's two commands stay true: CI runs the same test command, the quick start runs."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands():
    first = README.split("```", 2)[1]
    lines = [line for line in first.splitlines()[1:] if line.strip()]
    assert len(lines) == 2
    install, tests = lines
    assert "pip install -e '.[dev]'" in install
    assert install.endswith("rheon demo")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "CI must run exactly the README's test command"


def test_quick_start_prints_what_the_readme_says():
    code = _blocks("python")[0]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README quick start", "exec"), {})
    printed = buf.getvalue()
    assert "'card': 'a', 'window_start': 60000, 'window_end': 120000, 'n': 1, 'total': 30.0" in printed
    assert "[{'card': 'a', 'amount': 5.0, 'ts': 1500}]" in printed
    assert 'big: {"card": "a", "amount": 1200.0, "ts": 1000}' in printed
