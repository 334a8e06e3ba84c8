"""Sources report what waits to be read (``SourceLogic.backlog``), for the metrics."""

from __future__ import annotations

import rheon as rh
from rheon.io import _tail
from rheon.io.base import BuildContext

LINE = 14  # bytes of '{"i": "0000"}\n'


def _line(i: int) -> str:
    return f'{{"i": "{i:04d}"}}\n'


def test_a_followed_file_reports_the_bytes_not_read_yet(tmp_path, monkeypatch):
    monkeypatch.setattr(_tail, "_READ_BYTES", 64)  # at most 64 bytes per read: 4 whole lines
    path = tmp_path / "app.jsonl"
    path.write_text("".join(_line(i) for i in range(20)))
    logic = rh.io.JsonLines(path, follow=True, poll="10ms").build(BuildContext(flow="f", operator="logs"))
    first = logic.next_batch()
    assert first is not None
    assert first.height == 4
    assert logic.backlog() == {("app.jsonl", "bytes"): 16.0 * LINE}
    rows = first.height
    for _ in range(10):  # bounded: 4 more reads take the rest
        frame = logic.next_batch()
        rows += frame.height if frame is not None else 0
    assert rows == 20
    assert logic.backlog() == {("app.jsonl", "bytes"): 0.0}
    with path.open("a") as f:
        f.write(_line(20))
    assert logic.backlog() == {("app.jsonl", "bytes"): float(LINE)}
