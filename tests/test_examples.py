"""Every script in examples/ runs (examples that never run go stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARGS = {"live_sensors.py": ["6s"]}
EXPECT = {
    "quickstart.py": "late events",
    "clickstream_sessions.py": "sessions, longest",
    "word_count.py": "top words: [('to', 4)",
    "live_sensors.py": "avg {",
    "fraud_patterns.py": "planted cases found: 6 of 6; near misses flagged: 0",
}


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(script):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *ARGS.get(script, [])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert EXPECT[script] in proc.stdout, proc.stdout


CLI_ARGS = {"live_sensors.py": ["--duration", "6s"]}


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs_with_rheon_run(script):
    """`rheon run examples/X.py` runs every example: its module-level flow, or its main()."""
    proc = subprocess.run(
        [sys.executable, "-m", "rheon.cli", "run", str(EXAMPLES / script), *CLI_ARGS.get(script, [])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expected = EXPECT[script] if script != "live_sensors.py" else "avg {"
    assert expected in proc.stdout, proc.stdout
