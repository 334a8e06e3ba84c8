"""rh.io.Generator: its batches are the frames the row decoder would make, built cheaply."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import rheon as rh
from rheon.io.base import BuildContext
from rheon.io.records import RowDecoder
from rheon.testing import ManualClock

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=2),
)
_ROWS = st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), _VALUES, min_size=1), min_size=1, max_size=40)


def _logic(rows: list[Any], clock: ManualClock):
    """A generator's logic over ``rows``, one event per millisecond of ``clock``."""
    gen = rh.io.Generator(lambda i: rows[i], rate=1000, limit=len(rows))
    return gen.build(BuildContext(flow="f", operator="gen", clock=clock))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_ROWS, steps=st.lists(st.integers(1, 12), max_size=40))
def test_generator_batches_are_the_row_decoders_frames(rows, steps):
    """Whatever the rows (types that drift, fields that come and go, ints out of range, nested
    values), each batch is the frame the row decoder makes of the same rows, with the same dead
    letters: the generator's fast way to a frame changes nothing but the cost."""
    clock = ManualClock(start_ms=0)
    logic = _logic(rows, clock)
    reference = RowDecoder()
    for step in [0, *steps, len(rows)]:
        clock.advance(f"{step}ms")
        start = logic.snapshot()
        frame = logic.next_batch()
        if frame is None:
            continue
        expected, _, bad = reference(rows[start : logic.snapshot()])
        assert_frame_equal(frame, expected)
        assert logic.take_dead_letters() == [(f"Generator: {reason}", payload) for _, reason, payload in bad]
    assert logic.done()


def test_generator_checks_settled_rows_without_the_row_decoder(monkeypatch: pytest.MonkeyPatch):
    """Once the fields' types are fixed, batches of rows that fit them are built without the
    decoder's per-value checks (its cost was most of the source's at 50k events/s); a row that
    does not fit goes through the decoder again and is a dead letter."""
    calls = []
    decode = RowDecoder.__call__
    monkeypatch.setattr(RowDecoder, "__call__", lambda self, rows: calls.append(len(rows)) or decode(self, rows))
    rows = [{"k": i % 3, "v": i / 2, "s": "x", "ok": i % 2 == 0, "n": None if i % 7 else i} for i in range(50)]
    rows[40] = {**rows[40], "v": "forty"}
    clock = ManualClock(start_ms=0)
    logic = _logic(rows, clock)
    frames = [logic.next_batch()]
    for _ in range(10):
        clock.advance("5ms")
        frames.append(logic.next_batch())
    assert calls == [1, 5]  # the first batch fixes the types; rows 36-40 hold the text
    assert sum(f.height for f in frames if f is not None) == 49
    assert [reason.split(" (")[0] for reason, _ in logic.take_dead_letters()] == ["Generator: field 'v' is \"forty\""]
