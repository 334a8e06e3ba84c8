"""Building joins: interval, window and temporal joins of keyed streams; lookup joins of a
stream with a static table. ``KeyedStream.join`` and ``Stream.join`` call into here with what
they know of their inputs (:class:`~rheon.api._side.Side`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import polars as pl

from rheon.api._side import Side
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, columns_hint, did_you_mean
from rheon.operators.join.common import right_names
from rheon.runtime.graph import Node, SideOutput
from rheon.runtime.specs import JoinSpec, LookupJoinSpec
from rheon.time.windows import Session, Sliding, Tumbling

__all__ = ["check_how", "keyed_join_node", "lookup_join_node", "signed_ms"]

_HOW = ("inner", "left")


def signed_ms(value: Duration, *, what: str) -> int:
    """A duration that may be negative: ``"-5m"``, ``"+5m"``, ``"30s"`` or a timedelta.

    Examples
    --------
    >>> signed_ms("-5m", what="x"), signed_ms("+1s", what="x"), signed_ms(timedelta(seconds=-2), what="x")
    (-300000, 1000, -2000)
    """
    if isinstance(value, timedelta):
        sign = -1 if value < timedelta(0) else 1
        return sign * to_ms(abs(value), what=what)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "+-" and text:
            return (-1 if text[0] == "-" else 1) * to_ms(text[1:], what=what)
    return to_ms(value, what=what)


def _output_schema(
    left: pl.Schema | None, right: pl.Schema | None, right_keys: list[str], suffix: str
) -> pl.Schema | None:
    if left is None or right is None:
        return None
    names = right_names(left.names(), right.names(), right_keys, suffix)
    return pl.Schema({**dict(left), **{out: right[name] for name, out in names.items()}})


def check_how(how: str, where: str) -> str:
    """``how`` if it is a join kind rheon has (``inner``, ``left``)."""
    if how not in _HOW:
        msg = f"{where}: how must be 'inner' or 'left' (got {how!r})"
        raise FlowError(msg)
    return how


def keyed_join_node(
    op_name: str,
    kind: str,
    left: Side,
    right: Side,
    *,
    between: tuple[Duration, Duration] | None,
    window: Tumbling | Sliding | Session | None,
    how: str,
    suffix: str,
) -> Node:
    """The node of an interval, window or temporal join of two keyed streams, checked (see
    ``KeyedStream.join``); ``kind`` is ``interval_join``, ``window_join`` or ``temporal_join``."""
    where = f"{kind} '{op_name}'"
    if len(right.keys) != len(left.keys):
        msg = f"{where}: the two sides have {len(left.keys)} and {len(right.keys)} key columns; key both by as many"
        raise FlowError(msg)
    for side_name, side in (("left", left), ("right", right)):
        if side.time is None:
            msg = f'{where}: the {side_name} stream has no event-time column; joins need time="..." on its source'
            raise FlowError(msg)
    if left.time_type is not None and right.time_type is not None and left.time_type != right.time_type:
        msg = f"{where}: the two sides' event times have different types ({left.time_type.dtype} and {right.time_type.dtype})"
        raise FlowError(msg)
    left_keys, right_keys = list(left.keys), list(right.keys)
    left_time, right_time = left.time, right.time
    assert left_time is not None
    assert right_time is not None
    time_type = left.time_type or right.time_type
    schema = _output_schema(left.schema, right.schema, right_keys, suffix)
    out_time = left_time
    spec_between: tuple[int, int] | None = None
    spec_window: Tumbling | Sliding | None = None
    if kind == "temporal_join":
        if between is not None or window is not None:
            msg = f"{where}: a temporal join (with .latest()) takes neither between= nor window="
            raise FlowError(msg)
    elif (between is None) == (window is None):
        msg = f'{where}: give exactly one of between=("-5m", "+5m") (interval join) or window=rh.tumbling("1m")'
        raise FlowError(msg)
    elif between is not None:
        if not isinstance(between, tuple | list) or len(between) != 2:
            msg = f'{where}: between must be a pair such as ("-5m", "+5m") (got {between!r})'
            raise FlowError(msg)
        lower = signed_ms(between[0], what=f"{where}: between[0]")
        upper = signed_ms(between[1], what=f"{where}: between[1]")
        if lower > upper:
            msg = f"{where}: between starts after it ends ({between[0]!r} > {between[1]!r})"
            raise FlowError(msg)
        spec_between = (lower, upper)
    else:
        if not isinstance(window, Tumbling | Sliding):
            msg = f"{where}: window joins take rh.tumbling(...) or rh.sliding(...) (got {window!r})"
            raise FlowError(msg)
        spec_window = window
        out_time = "window_start"
        if schema is not None and time_type is not None:
            schema = pl.Schema({**dict(schema), "window_start": time_type.dtype, "window_end": time_type.dtype})

    spec = JoinSpec(
        tuple(left_keys),
        tuple(right_keys),
        left_time,
        right_time,
        how,
        suffix,
        time_type,
        between=spec_between,
        window=spec_window,
    )
    return Node(
        op_name,
        spec,
        [left.edge, right.edge],
        schema=schema,
        time=out_time,
        time_type=time_type,
        side_outputs={"late": SideOutput(None, None, None)},
    )


def _load_table(table: pl.DataFrame | str | Path, where: str) -> pl.DataFrame:
    if isinstance(table, pl.DataFrame):
        return table
    path = Path(table)
    if not path.is_file():
        msg = f"{where}: no table file at '{path}'. Try a DataFrame, or a .parquet/.csv/.jsonl path."
        raise FlowError(msg)
    readers: dict[str, Callable[[Path], pl.DataFrame]] = {
        ".parquet": pl.read_parquet,
        ".csv": pl.read_csv,
        ".jsonl": pl.read_ndjson,
        ".ndjson": pl.read_ndjson,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        msg = f"{where}: cannot read '{path.name}' as a table; use .parquet, .csv or .jsonl"
        raise FlowError(msg)
    return reader(path)


def lookup_join_node(
    op_name: str,
    stream: Side,
    table: pl.DataFrame | str | Path,
    *,
    on: str | list[str],
    how: str,
    suffix: str,
) -> Node:
    """The node joining a stream with a static table on columns ``on``, checked (see ``Stream.join``)."""
    where = f"lookup_join '{op_name}'"
    how = check_how(how, where)
    frame = _load_table(table, where)
    keys = [on] if isinstance(on, str) else list(on)
    if not keys:
        msg = f"{where}: on= must name at least one column"
        raise FlowError(msg)
    for key in keys:
        if key not in frame.columns:
            msg = f"{where}: the table has no column '{key}' {columns_hint(frame.columns)}.{did_you_mean(key, frame.columns)}"
            raise FlowError(msg)
    if stream.schema is not None:
        for key in keys:
            if key not in stream.schema:
                names = stream.schema.names()
                msg = f"{where}: unknown column '{key}' {columns_hint(names)}.{did_you_mean(key, names)}"
                raise FlowError(msg)
    schema = _output_schema(stream.schema, frame.schema, keys, suffix)
    return Node(
        op_name,
        LookupJoinSpec(frame, tuple(keys), how, suffix),
        [stream.edge],
        schema=schema,
        time=stream.time,
        time_type=stream.time_type,
    )
