"""A run says what it does through logging: start, checkpoints, restore, end; as JSON lines too."""

from __future__ import annotations

import io
import json
import logging

import pytest

import rheon as rh


@pytest.fixture
def log_lines():
    buf = io.StringIO()
    rh.configure_logging("INFO", stream=buf, json_lines=True)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    logger = logging.getLogger("rheon")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def _flow() -> rh.Flow:
    flow = rh.Flow("logged")
    rows = [{"k": i % 3, "ts": i * 100} for i in range(50)]
    flow.source(rh.io.Records(rows, batch_size=10), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
        n=rh.count()
    ).sink(rh.io.Collect())
    return flow


def test_a_run_logs_its_start_checkpoints_restore_and_end(tmp_path, log_lines):
    _flow().run(checkpoint_dir=tmp_path, checkpoint_every="0ms")
    _flow().run(checkpoint_dir=tmp_path)
    events = [(line["event"], line.get("flow"), line.get("reason")) for line in log_lines()]
    assert events[0] == ("run_started", "logged", None)
    assert ("checkpoint", "logged", None) in events
    assert events.index(("run_ended", "logged", "input_ended")) > events.index(("checkpoint", "logged", None))
    restored = [line for line in log_lines() if line["event"] == "restored"]
    assert len(restored) == 1
    assert restored[0]["finished"] == "True"
    ended = [line for line in log_lines() if line["event"] == "run_ended"]
    assert [e["records_in"] for e in ended] == ["50", "0"]
    first_checkpoint = next(line for line in log_lines() if line["event"] == "checkpoint")
    assert int(first_checkpoint["bytes"]) > 0


def test_a_failed_run_logs_why(log_lines):
    flow = rh.Flow("broken", on_error="fail")
    flow.source(rh.io.Records([{"x": 0}])).map(lambda r: {"y": 1 / r["x"]}).sink(rh.io.Collect())
    with pytest.raises(rh.RecordError):
        flow.run()
    failed = [line for line in log_lines() if line["event"] == "run_failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "ERROR"
    assert "ZeroDivisionError" in failed[0]["error"]
