"""Build-time mistakes raise FlowError naming the operator, the field and the value."""

from __future__ import annotations

import polars as pl
import pytest

import rheon as rh

ROWS = [{"card": "a", "amount": 5, "ts": 0, "note": "x"}]


def _tx(flow: rh.Flow | None = None) -> rh.Stream:
    flow = flow or rh.Flow("f")
    return flow.source(rh.io.Records(ROWS), time="ts", name="tx")


def test_unknown_column_in_filter_expression_suggests_the_right_one():
    with pytest.raises(
        rh.FlowError,
        match=r"filter 'big': unknown column 'amout' \(columns: card, amount, ts, note\)\. Did you mean 'amount'\?",
    ):
        _tx().filter(rh.col("amout") > 1000, name="big")


def test_filter_expression_must_be_boolean():
    with pytest.raises(rh.FlowError, match=r"filter 'f': the predicate gives Int64, expected Boolean"):
        _tx().filter(rh.col("amount") * 2, name="f")


def test_unknown_columns_in_select_key_by_with_columns():
    with pytest.raises(rh.FlowError, match=r"select 'pick': unknown column 'cardd'.*Did you mean 'card'"):
        _tx().select("cardd", name="pick")
    with pytest.raises(rh.FlowError, match=r"key_by: unknown column 'crd'.*Did you mean 'card'"):
        _tx().key_by("crd")
    with pytest.raises(rh.FlowError, match=r"with_columns 'with_columns_1': unknown column 'amont'"):
        _tx().with_columns(x=rh.col("amont") + 1)


def test_unknown_time_column_names_source():
    with pytest.raises(rh.FlowError, match=r"source 'src': unknown time column 'time'"):
        rh.Flow("f").source(rh.io.Records(ROWS), time="time", name="src")


def test_time_column_of_wrong_type():
    with pytest.raises(rh.FlowError, match=r"source 'source_1': time column 'note' has type String; expected int64"):
        rh.Flow("f").source(rh.io.Records(ROWS), time="note")


def test_window_needs_event_time():
    flow = rh.Flow("f")
    s = flow.source(rh.io.Records(ROWS))
    with pytest.raises(rh.FlowError, match=r"window 'w': the stream has no event-time column.*time=\"ts\""):
        s.key_by("card").window(rh.tumbling("1m"), name="w")
    dropped = _tx().select("card", "amount")
    with pytest.raises(rh.FlowError, match="no event-time column"):
        dropped.key_by("card").window(rh.tumbling("1m"))


def test_aggregation_mistakes_name_window_and_field():
    keyed = _tx().key_by("card")
    with pytest.raises(
        rh.FlowError,
        match=r"window 'per_card': aggregation 'total' = rh.sum\('amout'\): unknown column 'amout'.*Did you mean 'amount'",
    ):
        keyed.window(rh.tumbling("1m"), name="per_card").agg(total=rh.sum("amout"))
    with pytest.raises(
        rh.FlowError, match=r"aggregation 'avg' = rh.mean\('note'\): column 'note' has type String, expected a number"
    ):
        keyed.window(rh.tumbling("1m")).agg(avg=rh.mean("note"))
    with pytest.raises(rh.FlowError, match="agg\\(\\) needs at least one aggregation"):
        keyed.window(rh.tumbling("1m")).agg()
    with pytest.raises(rh.FlowError, match="aggregation name 'card' clashes"):
        keyed.window(rh.tumbling("1m")).agg(card=rh.count())
    with pytest.raises(rh.FlowError, match=r"must be rh\.count\(\), rh\.sum\(col\)"):
        keyed.window(rh.tumbling("1m")).agg(n="count")  # type: ignore[arg-type]
    with pytest.raises(rh.FlowError, match=r"rh.sum: expected a column name \(got 3\)"):
        rh.sum(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rh.tumbling("0s"), r"tumbling: size must be longer than 0 \(got '0s'\)"),
        (lambda: rh.tumbling("2 sec"), r"tumbling: size: cannot read duration '2 sec'\. Try \"250ms\""),
        (
            lambda: rh.tumbling(5),
            r"tumbling: size: a duration must be a string like \"2s\" or a datetime.timedelta \(got 5 that is a int\)",
        ),
        (lambda: rh.sliding("1m", every="2m"), r"sliding: every \('2m'\) is longer than size \('1m'\)"),
        (lambda: rh.session(gap="-1s"), r"session: gap: cannot read duration '-1s'"),
    ],
)
def test_bad_window_definitions(make, message):
    with pytest.raises(rh.FlowError, match=message):
        make()


def test_bad_durations_on_source_and_lateness():
    with pytest.raises(rh.FlowError, match=r"source 'source_1': max_delay: cannot read duration '2 s'"):
        rh.Flow("f").source(rh.io.Records(ROWS), time="ts", max_delay="2 s")
    with pytest.raises(rh.FlowError, match=r"max_delay needs an event-time column"):
        rh.Flow("f").source(rh.io.Records(ROWS), max_delay="2s")
    with pytest.raises(rh.FlowError, match=r"window 'w': allowed_lateness: cannot read duration 'soon'"):
        _tx().key_by("card").window(rh.tumbling("1m"), allowed_lateness="soon", name="w")


def test_late_only_on_window_results():
    with pytest.raises(
        rh.FlowError,
        match=r"late\(\): filter 'f' is not a window aggregation or a join, nor an event-time operator.*\.dedup",
    ):
        _tx().filter(rh.col("amount") > 1, name="f").late()


def test_union_checks():
    flow = rh.Flow("f")
    a = _tx(flow)
    with pytest.raises(rh.FlowError, match="streams belong to different flows"):
        a.union(_tx())
    untimed = flow.source(rh.io.Records(ROWS), name="plain")
    with pytest.raises(
        rh.FlowError,
        match=r"union 'u': inputs disagree on the event-time column \(source 'tx' has 'ts', source 'plain' has None\)",
    ):
        a.union(untimed, name="u")
    dt = flow.source(
        rh.io.Records(pl.DataFrame({"ts": [0]}).with_columns(pl.col("ts").cast(pl.Datetime("ms")))), time="ts"
    )
    with pytest.raises(rh.FlowError, match="inputs have different event-time types"):
        a.union(dt)


def test_flow_level_checks():
    with pytest.raises(rh.FlowError, match="on_error must be one of dead_letter, fail, skip"):
        rh.Flow("f", on_error="ignore")
    flow = rh.Flow("f")
    _tx(flow).filter(rh.col("amount") > 1)
    with pytest.raises(rh.FlowError, match=r"flow 'f' has no sink.*stream.sink\(rh.io.Collect\(\)\)"):
        flow.run()
    with pytest.raises(rh.FlowError, match="flow 'empty' has no source"):
        rh.Flow("empty").run()
    with pytest.raises(rh.FlowError, match=r"source 'tx': the name is already used in flow 'f'"):
        _tx(flow)
    with pytest.raises(rh.FlowError, match=r"source: expected a source such as rh\.io\.Records"):
        flow.source([1, 2])  # type: ignore[arg-type]


def test_with_columns_may_not_change_event_time_type():
    with pytest.raises(rh.FlowError, match=r"changes the type of the event-time column 'ts' from Int64 to Float64"):
        _tx().with_columns(ts=rh.col("ts") / 2)


def test_records_rejects_non_dict_rows():
    with pytest.raises(rh.FlowError, match=r"Records: row 1 is a list, expected a dict"):
        rh.io.Records([{"a": 1}, [1, 2]])


def test_column_errors_found_only_at_run_time_still_name_the_operator():
    """After a Python map the schema is unknown; a missing column is reported when it runs."""
    flow = rh.Flow("f")
    out = rh.io.Collect()
    _tx(flow).map(lambda r: {"x": 1}).filter(rh.col("amount") > 1, name="late_check").sink(out)
    with pytest.raises(rh.FlowError, match=r"filter 'late_check': .*amount.*\(columns: x\)"):
        flow.run()
