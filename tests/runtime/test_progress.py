"""The live progress line: what it shows, during and at the end of a run."""

from __future__ import annotations

import io
import threading

from rich.console import Console

import rheon as rh
from rheon.core.metrics import MetricsRegistry
from rheon.runtime.progress import ProgressLine


def test_a_run_with_progress_ends_with_its_totals_on_stderr(capsys):
    rows = [{"k": i % 3, "x": i % 25, "ts": i * 100} for i in range(50)]
    flow = rh.Flow("shown")
    src = flow.source(rh.io.Records(rows), time="ts", max_delay="1s")
    src.map(lambda r: {"inverse": 1 / r["x"]}).sink(rh.io.Collect())
    flow.run(progress=True)
    err = capsys.readouterr().err
    assert "shown" in err
    assert "in 50" in err
    assert "out 48" in err
    assert "dead letters 2" in err
    assert "watermark 00:00:03.900 UTC" in err  # 4,900 ms minus the 1 s delay


def test_the_line_moves_while_the_flow_runs():
    registry = MetricsRegistry("moving")
    source = registry.part("source 'tx'", "source")
    buf = io.StringIO()
    line = ProgressLine(registry, console=Console(file=buf, width=120, force_terminal=True))
    try:
        shown = threading.Event()

        def grow() -> None:
            for _ in range(200):
                source.rows_out += 1_000
                if ",000" in buf.getvalue():  # a count of thousands was drawn
                    shown.set()
                    return
                threading.Event().wait(0.02)

        grow()
        assert shown.is_set()
    finally:
        line.stop()
    assert "moving" in buf.getvalue()
