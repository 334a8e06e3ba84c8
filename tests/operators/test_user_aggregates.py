"""``rh.Aggregate`` and ``rh.agg_fn``: user-defined aggregations against a plain-Python
reference at every window kind and batch size, through a crash, and their errors."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon.testing import assert_rows_equal
from tests.crash import Crash, committed, crash_at_row
from tests.reference import reference

WINDOWS = [("tumbling", 100, 100), ("sliding", 100, 20), ("session", 25, 0)]


class WeightedMean(rh.Aggregate):
    dtype = pl.Float64()

    def __init__(self, value: str, weight: str, *, where: pl.Expr | None = None) -> None:
        super().__init__(value, weight, where=where)
        self.value, self.weight = value, weight

    def add(self, col):
        weight = pl.when(col(self.value).is_not_null()).then(col(self.weight))  # rows with a value
        return {"total": (col(self.value) * weight).sum(), "weight": weight.sum()}

    def merge(self, col):
        return {"total": col("total").sum(), "weight": col("weight").sum()}

    def finish(self, col):
        return pl.when(col("weight") != 0).then(col("total") / col("weight"))


class Span(rh.Aggregate):
    """max - min of a column, with a setting shown in the repr."""

    def __init__(self, column: str, scale: float = 1.0) -> None:
        super().__init__(column)
        self.column, self.scale = column, scale

    def add(self, col):
        return {"lo": col(self.column).min(), "hi": col(self.column).max()}

    def merge(self, col):
        return {"lo": col("lo").min(), "hi": col("hi").max()}

    def finish(self, col):
        return (col("hi") - col("lo")) * self.scale


def _events(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    return [
        {
            "k": rnd.randrange(3),
            "ts": max(i * 20 + rnd.randint(-60, 60), 0),
            "v": None if rnd.random() < 0.1 else rnd.randint(-50, 50),
            "w": rnd.randint(0, 5),
            "u": rnd.choice("abc"),
            "id": i,
        }
        for i in range(n)
    ]


def _engine(rows, window, batch_size, **aggs):
    kind, size, every = window
    assigner = {
        "tumbling": lambda: rh.tumbling(f"{size}ms"),
        "sliding": lambda: rh.sliding(f"{size}ms", every=f"{every}ms"),
        "session": lambda: rh.session(gap=f"{size}ms"),
    }[kind]()
    flow = rh.Flow("user")
    out, dead = rh.io.Collect(), rh.io.Collect()
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="30ms")
    src.key_by("k").window(assigner).agg(**aggs).sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    return out.rows, dead.rows


def _weighted(records, where=None):
    pairs = [(r["v"], r["w"]) for r in records if r["v"] is not None and (where is None or r["u"] == where)]
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
def test_user_aggregates_match_a_plain_python_reference(window, batch_size):
    rows = _events(200, seed=31)
    # the reference computes the windows; the aggregates are recomputed from each window's rows
    windows = reference(rows, keys=["k"], time="ts", window=window, aggs={"ids": ("collect", "id")}, max_delay=30)[0]
    got, dead = _engine(
        rows,
        window,
        batch_size,
        wm=WeightedMean("v", "w"),
        wm_a=WeightedMean("v", "w", where=rh.col("u") == "a"),
        span=Span("v", scale=2.0),
        median=rh.agg_fn(statistics.median, "v", dtype=pl.Float64),
        n=rh.agg_fn(len, "v", where=rh.col("u") == "b"),
    )
    assert dead == []
    by_window = {(r["k"], r["window_start"], r["window_end"]): r for r in got}
    assert len(by_window) == len(windows) > 15
    for w in windows:
        ids = set(w["ids"])
        mine = [r for r in rows if r["id"] in ids]
        values = [r["v"] for r in mine if r["v"] is not None]
        row = by_window[(w["k"], w["window_start"], w["window_end"])]
        expected = {
            "wm": _weighted(mine),
            "wm_a": _weighted(mine, "a"),
            "span": (max(values) - min(values)) * 2.0 if values else None,
            "median": float(statistics.median(values)) if values else None,
            "n": sum(1 for r in mine if r["u"] == "b" and r["v"] is not None) or None,  # no value: null
        }
        assert_rows_equal([{k: row[k] for k in expected}], [expected], rel_tol=1e-12)


def test_a_failing_function_gives_a_null_and_a_dead_letter():
    rows = [{"k": 1, "ts": t, "v": v} for t, v in enumerate([1, 2, 3])] + [{"k": 2, "ts": 5, "v": 4}]

    def picky(values: list[int]) -> int:
        if 4 in values:
            raise ValueError("four is not allowed")
        return sum(values)

    got, dead = _engine(rows, ("tumbling", 1000, 1000), 1, total=rh.agg_fn(picky, "v"))
    assert [(r["k"], r["total"]) for r in got] == [(1, 6), (2, None)]
    assert len(dead) == 1
    assert "rh.agg_fn(picky, 'v') raised ValueError: four is not allowed" in dead[0]["reason"]
    assert '"values": [4]' in dead[0]["payload"]


def test_results_that_do_not_fit_one_type_ask_for_dtype():
    rows = [{"k": 1, "ts": 0, "v": 1}, {"k": 1, "ts": 1, "v": 2}, {"k": 2, "ts": 0, "v": 1}]
    with pytest.raises(
        rh.FlowError,
        match=r"rh.agg_fn\(<lambda>, 'v'\): its results \(int, str\) do not fit one column type; give dtype=",
    ):
        _engine(rows, ("tumbling", 1000, 1000), 1000, odd=rh.agg_fn(lambda vs: "x" if len(vs) > 1 else 1, "v"))


def _flow(rows, out: Path, crash_after: int | None = None, scale: float = 2.0) -> rh.Flow:
    flow = rh.Flow("user-crash")
    src = flow.source(rh.io.Records(rows, batch_size=15), time="ts", max_delay="60ms")
    result = (
        src.key_by("k")
        .window(rh.sliding("200ms", every="50ms"), name="w")
        .agg(wm=WeightedMean("v", "w"), span=Span("v", scale=scale), median=rh.agg_fn(statistics.median, "v"))
    )
    result.sink(rh.io.FileSink(out), name="out")
    result.sink(crash_at_row(crash_after), name="watch")
    return flow


def test_a_crash_and_restore_gives_the_uninterrupted_output(tmp_path):
    rows = _events(300, seed=8)
    _flow(rows, tmp_path / "reference").run()
    expected = committed(tmp_path / "reference")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        _flow(rows, out, crash_after=40).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    _flow(rows, out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert len(expected) > 50
    assert committed(out) == expected


def test_a_changed_setting_is_refused_on_restore(tmp_path):
    rows = _events(100, seed=2)
    _flow(rows, tmp_path / "a", crash_after=None).run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    with pytest.raises(rh.FlowError, match=r"written by a different operator.*Span\('v', column='v', scale=2.0\)"):
        _flow(rows, tmp_path / "b", scale=3.0).run(checkpoint_dir=tmp_path / "ckpt")


# -- errors and names -----------------------------------------------------------------------------


def _windowed() -> rh.WindowedStream:
    flow = rh.Flow("e")
    rows = [{"k": 1, "ts": 0, "v": 1.0, "w": 2, "u": "a"}]
    return flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s"))


def test_the_repr_names_the_class_its_inputs_and_settings():
    assert repr(Span("v", scale=0.5)) == "Span('v', column='v', scale=0.5)"
    assert repr(WeightedMean("v", "w")) == "WeightedMean('v', 'w', value='v', weight='w')"
    assert "0x" not in repr(rh.agg_fn(lambda vs: 0, "v"))


def test_unknown_input_columns_are_flow_errors():
    with pytest.raises(rh.FlowError, match=r"aggregation 'x'.*unknown input column 'ww'.*Did you mean 'w'"):
        _windowed().agg(x=WeightedMean("v", "ww"))


def test_merge_must_give_what_add_gives():
    class Broken(WeightedMean):
        def merge(self, col):
            return {"total": col("total").sum()}

    with pytest.raises(rh.FlowError, match=r"merge\(\) must give the partials add\(\) gives"):
        _windowed().agg(x=Broken("v", "w"))


def test_expressions_that_cannot_run_on_the_stream_are_flow_errors():
    class TextSum(rh.Aggregate):
        def add(self, col):
            return {"s": col("u").sum() + 1}

        def merge(self, col):
            return {"s": col("s").sum()}

        def finish(self, col):
            return col("s")

    with pytest.raises(rh.FlowError, match=r"aggregation 'x' = TextSum\('u'\) cannot run on this stream"):
        _windowed().agg(x=TextSum("u"))


def test_add_reading_a_column_not_in_its_inputs_is_a_flow_error():
    class Sneaky(Span):
        def add(self, col):
            return {"lo": col("w").min(), "hi": col(self.column).max()}

    with pytest.raises(rh.FlowError, match=r"add\(\) reads column 'w', which is not in its inputs \('v',\)"):
        _windowed().agg(x=Sneaky("v"))


def test_missing_inputs_and_functions_are_flow_errors():
    with pytest.raises(rh.FlowError, match=r"Span: pass the input column names to Aggregate.__init__"):
        rh.Aggregate.__init__(Span.__new__(Span))
    with pytest.raises(rh.FlowError, match=r"rh.agg_fn: expected a function of a list of values"):
        rh.agg_fn(3, "v")  # type: ignore[arg-type]


def test_integers_and_floats_come_out_as_floats():
    rows = [{"k": 1, "ts": 0, "v": 1}, {"k": 1, "ts": 1, "v": 2}, {"k": 2, "ts": 0, "v": 1}]
    got, _ = _engine(rows, ("tumbling", 1000, 1000), 1000, m=rh.agg_fn(statistics.mean, "v"))
    assert [(r["k"], r["m"]) for r in got] == [(1, 1.5), (2, 1.0)]


def test_weighted_mean_example_value():
    rows = [{"k": 1, "ts": t, "v": v, "w": w} for t, (v, w) in enumerate([(10.0, 1), (13.0, 3)])]
    got, _ = _engine(rows, ("tumbling", 1000, 1000), 1000, wm=WeightedMean("v", "w"))
    assert math.isclose(got[0]["wm"], 12.25)
