"""Sources report what waits to be read (``SourceLogic.backlog``), for the metrics."""

from __future__ import annotations

import rheon as rh
from rheon.io import _tail
from rheon.io.base import BuildContext

LINE = 12  # bytes of '{"i": 0000}\n'


def test_a_followed_file_reports_the_bytes_not_read_yet(tmp_path, monkeypatch):
    monkeypatch.setattr(_tail, "_READ_BYTES", 64)  # at most 64 bytes per read: 5 whole lines
    path = tmp_path / "app.jsonl"
    path.write_text("".join(f'{{"i": {i:04d}}}\n' for i in range(20)))
    logic = rh.io.JsonLines(path, follow=True, poll="10ms").build(BuildContext(flow="f", operator="logs"))
    read = 0
    while read == 0:
        frame = logic.next_batch()
        read += frame.height if frame is not None else 0
    assert read == 5
    assert logic.backlog() == {("app.jsonl", "bytes"): 15.0 * LINE}
    while logic.backlog()[("app.jsonl", "bytes")] > 0:
        logic.next_batch()
    assert logic.backlog() == {("app.jsonl", "bytes"): 0.0}
    with path.open("a") as f:
        f.write('{"i": 9999}\n')
    assert logic.backlog() == {("app.jsonl", "bytes"): float(LINE)}
