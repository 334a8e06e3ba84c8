"""Window state held as NumPy arrays (operators/window/arrays.py, operators/accumulators.py):
the same rows, bit for bit, as the state held as a Polars frame, at any batching; a batch the
arrays cannot hold moves the state to the frame and back; checkpoints restore across forms."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.operators import exactsum
from rheon.operators.accumulators import ExactSumAccumulator, ExtremeAccumulator, Grid
from rheon.operators.window import arrays as arrays_module
from rheon.operators.window.arrays import PaneArrays
from rheon.operators.window.panes import PaneWindowOperator
from rheon.time.windows import PaneGeometry, Tumbling
from tests.crash import Crash, committed, crash_at_row

KEY_TYPES = [pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32]


def _aggs() -> dict[str, rh.Aggregation]:
    return {
        "n": rh.count(),
        "nf": rh.count("f"),
        "total": rh.sum("f"),
        "avg": rh.mean("f"),
        "lo": rh.min("f"),
        "hi": rh.max("f"),
        "isum": rh.sum("v"),
        "imin": rh.min("v"),
    }


def _run(
    frame: pl.DataFrame, window: rh.WindowAssigner, *, arrays: bool, batch: int, lateness: str = "0ms"
) -> list[tuple]:
    PaneWindowOperator.ARRAYS = arrays
    try:
        flow = rh.Flow("arrays")
        out = rh.io.Collect()
        src = flow.source(rh.io.Records(frame, batch_size=batch), time="ts", max_delay="20ms")
        keyed = src.key_by("k") if "k" in frame.columns else src
        result = keyed.window(window, allowed_lateness=lateness).agg(**_aggs())
        result.sink(out)
        late = rh.io.Collect()
        result.late().sink(late)
        flow.run()
        return [*out.to_polars().rows(), ("late", *late.to_polars().rows())]
    finally:
        PaneWindowOperator.ARRAYS = True


def _same(got: list[tuple], want: list[tuple]) -> None:
    """Equal rows, floats compared by their bits (NaN equal to NaN)."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert (x == y and math.copysign(1, x) == math.copysign(1, y)) or (math.isnan(x) and math.isnan(y)), (
                    a,
                    b,
                )
            else:
                assert x == y, (a, b)


floats = st.one_of(
    st.none(),
    st.just(0.0),
    st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x == 0 or abs(x) >= 1e-12),
    st.floats(1e-12, 1e-9),  # below the first bin edge (2**-26): a second bin
    st.floats(1e12, 1e18).map(lambda x: -x),  # large: every limb and the carries
)
# (1e-12 to 1e18 span three bins. Wider windows, such as one with 1e-300 and 1.0, take the
# float sum, whose last bits depend on the order values were added in, in either form and at
# any batching: exactsum.py)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    key_type=st.sampled_from([*KEY_TYPES, None]),
    window=st.one_of(
        st.integers(5, 80).map(lambda s: rh.tumbling(f"{s}ms")),
        st.tuples(st.integers(2, 20), st.integers(1, 5)).map(
            lambda p: rh.sliding(f"{p[0] * p[1]}ms", every=f"{p[0]}ms")
        ),
        st.tuples(st.integers(1, 10), st.integers(2, 7), st.integers(1, 7)).map(
            lambda p: rh.sliding(f"{p[0] * max(p[1], p[2])}ms", every=f"{p[0] * min(p[1], p[2])}ms")
        ),
    ),
    lateness=st.sampled_from(["0ms", "15ms"]),
    batches=st.lists(st.integers(1, 40), min_size=1, max_size=2),
)
def test_arrays_give_the_frames_rows_bit_for_bit(data, key_type, window, lateness, batches):
    n = data.draw(st.integers(0, 120))
    columns = {"ts": pl.Series([data.draw(st.integers(0, 400)) for _ in range(n)], dtype=pl.Int64)}
    if key_type is not None:
        info = np.iinfo(pl.Series([], dtype=key_type).to_numpy().dtype)
        low = data.draw(st.integers(int(info.min), int(info.max) - 3))
        columns["k"] = pl.Series([low + data.draw(st.integers(0, 3)) for _ in range(n)], dtype=key_type)
    columns["f"] = pl.Series([data.draw(floats) for _ in range(n)], dtype=pl.Float64)
    columns["v"] = pl.Series([data.draw(st.none() | st.integers(-(2**40), 2**40)) for _ in range(n)], dtype=pl.Int64)
    frame = pl.DataFrame(columns)
    want = _run(frame, window, arrays=False, batch=max(n, 1), lateness=lateness)
    for batch in [*batches, max(n, 1)]:
        _same(_run(frame, window, arrays=True, batch=batch, lateness=lateness), want)


def test_many_large_values_per_key_carry_exactly():
    """20,000 values of up to 1e18 over three keys: the limbs' sums carry (a pane created by a
    batch, and one merged into); the sums are the frame's, which are exact."""
    rng = np.random.default_rng(5)
    n = 20_000
    frame = pl.DataFrame(
        {
            "ts": np.sort(rng.integers(0, 2_000, n)),
            "k": rng.integers(0, 3, n),
            "f": rng.uniform(-1, 1, n) * 10.0 ** rng.integers(-3, 18, n),
            "v": rng.integers(-(2**40), 2**40, n),
        }
    )
    window = rh.tumbling("500ms")
    want = _run(frame, window, arrays=False, batch=n)
    for batch in (n, 3_000, 997):
        _same(_run(frame, window, arrays=True, batch=batch), want)


def test_the_state_goes_to_the_frame_for_a_batch_it_cannot_hold_and_comes_back(monkeypatch):
    """A NaN in a ``min`` cannot be held as arrays: the state moves to the frame, gives the
    frame's rows, and moves back once the NaN's windows are gone."""
    loads: list[bool] = []
    load = PaneArrays.load

    def spy(self, frame):
        loads.append(load(self, frame))
        return loads[-1]

    monkeypatch.setattr(PaneArrays, "load", spy)
    rnd = random.Random(2)
    rows = [{"ts": i, "k": rnd.randrange(4), "f": rnd.uniform(-1, 1), "v": rnd.randrange(100)} for i in range(1_500)]
    rows[100]["f"] = math.nan
    frame = pl.DataFrame(rows)
    # Windows fire (and the state is flushed) every batch; the NaN's pane is held for 80
    # batches, longer than the 64 flushes between tries.
    window = rh.sliding("800ms", every="10ms")
    want = _run(frame, window, arrays=False, batch=10)
    _same(_run(frame, window, arrays=True, batch=10), want)
    assert False in loads, "the frame holding the NaN's window cannot be loaded into arrays"
    assert loads[-1] is True, "once that window is gone, the state is back in arrays"


def test_a_declined_batch_leaves_the_arrays_unchanged():
    geo = PaneGeometry.of(Tumbling(10, 0), ticks_per_ms=1)
    state = PaneArrays("k", [ExtremeAccumulator("f", "m", pl.Float64(), smallest=True)], geo)
    assert state.add(pl.DataFrame({"k": [1, 2], "__pane": [0, 0], "f": [0.5, 0.25]}))
    before = state.frame()
    assert not state.add(pl.DataFrame({"k": [1], "__pane": [0], "f": [math.nan]}))  # NaN: the Polars path's
    assert not state.add(pl.DataFrame({"k": [1, None], "__pane": [0, 0], "f": [0.5, 0.5]}))  # a null key
    far = 1 + arrays_module.MAX_SLOTS
    assert not state.add(pl.DataFrame({"k": [far], "__pane": [0], "f": [0.5]}))  # keys too far apart
    assert state.frame().equals(before)


def test_exact_sums_in_arrays_round_trip_through_their_partials():
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, 5_000) * 10.0 ** rng.integers(-12, 12, 5_000)
    x[::7] = 0.0
    keys = rng.integers(0, 50, 5_000)
    acc = ExactSumAccumulator("x", "p")
    fields = acc.add(pl.DataFrame({"x": x}), Grid(keys, 50))
    assert fields is not None
    acc.settle(fields)
    partials = acc.partials(fields)
    assert partials.filter((pl.col("p_hi") - pl.col("p_lo")) > 2).height == 0  # 1e-12 .. 1e12: three bins
    loaded = acc.load(partials)
    assert loaded is not None
    assert acc.partials(loaded).equals(partials)
    sums = exactsum.finish(partials, "p").get_column("p_sum").to_list()
    for k in range(50):
        assert sums[k] == pytest.approx(math.fsum(x[keys == k]), rel=2**-52, abs=0)  # faithfully rounded
        assert partials.get_column("p_n")[k] == int((keys == k).sum())


def _crash_flow(frame: pl.DataFrame, out: Path, crash_after: int | None = None) -> rh.Flow:
    flow = rh.Flow("arrays-crash")
    src = flow.source(rh.io.Records(frame, batch_size=25), time="ts", max_delay="30ms")
    result = src.key_by("k").window(rh.sliding("100ms", every="25ms")).agg(**_aggs())
    result.sink(rh.io.FileSink(out), name="out")
    result.sink(crash_at_row(crash_after), name="watch")
    return flow


@pytest.mark.parametrize(("before", "after"), [(True, False), (False, True), (True, True)])
def test_a_checkpoint_of_either_form_restores_into_either(tmp_path, monkeypatch, before, after):
    rnd = random.Random(4)
    frame = pl.DataFrame(
        [
            {
                "ts": i * 3 + rnd.randint(-20, 20) + 50,
                "k": rnd.randrange(5),
                "f": rnd.uniform(-9, 9),
                "v": rnd.randrange(-9, 9),
            }
            for i in range(800)
        ]
    )
    monkeypatch.setattr(PaneWindowOperator, "ARRAYS", False)
    _crash_flow(frame, tmp_path / "reference").run()
    expected = committed(tmp_path / "reference")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    monkeypatch.setattr(PaneWindowOperator, "ARRAYS", before)
    with pytest.raises(Crash):
        _crash_flow(frame, out, 150).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    monkeypatch.setattr(PaneWindowOperator, "ARRAYS", after)
    _crash_flow(frame, out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert len(expected) > 300
    assert committed(out) == expected


def test_a_sum_of_negative_zeros_is_zero_at_any_batching():
    """-0.0 + -0.0 is -0.0 as floats, but whether a group's zeros were added as floats depends on
    the batch (and on the form of the state): the sum of zeros is always 0.0, as math.fsum says."""
    frame = pl.DataFrame(
        {"ts": [0, 1, 2, 12, 25], "k": [0, 0, 1, 1, 0], "f": [-0.0, -0.0, 0.5, 0.25, -0.0], "v": [1, 2, 3, 4, 5]}
    )
    for arrays in (True, False):
        for batch in (1, 2, 5):
            rows = _run(frame, rh.tumbling("10ms"), arrays=arrays, batch=batch)
            zeros = [row for row in rows if row[0] == 0]
            assert [math.copysign(1, row[5]) for row in zeros] == [1.0, 1.0], (arrays, batch, zeros)


def test_arrays_that_would_be_mostly_empty_give_way_to_the_frame(monkeypatch):
    """Two keys 60,000 apart, eight records per millisecond, in batches of one millisecond:
    each batch fits (one pane of 60,001 slots), but the fifty panes a window holds would take
    60,001 slots per field each, for two keys. The state goes to the frame instead, and the rows
    are the frame's."""
    declined: list[bool] = []
    add = PaneArrays.add

    def spy(self, rows):
        declined.append(not add(self, rows))
        return not declined[-1]

    monkeypatch.setattr(PaneArrays, "add", spy)
    n = 800
    frame = pl.DataFrame(
        {"ts": np.arange(n) // 8, "k": np.arange(n) % 2 * 60_000, "f": np.ones(n), "v": np.ones(n, dtype=np.int64)}
    )
    window = rh.sliding("50ms", every="1ms")
    _same(_run(frame, window, arrays=True, batch=8), _run(frame, window, arrays=False, batch=8))
    assert declined[0] is False, "the first batch fits"
    assert True in declined
