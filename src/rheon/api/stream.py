"""Streams and the operators on them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from rheon.api._schema import infer
from rheon.api._side import Side
from rheon.api.aggregations import Aggregate
from rheon.api.joins import check_how, keyed_join_node, lookup_join_node
from rheon.api.matching import match_node
from rheon.cep.pattern import Pattern
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, columns_hint, did_you_mean
from rheon.core.eventtime import TimeType
from rheon.io.base import Sink
from rheon.io.callback import Callback
from rheon.io.show import Show
from rheon.operators.aggregations import Aggregation
from rheon.operators.dedup import REPEATS
from rheon.operators.rowfn import RowStep
from rheon.operators.topn import RANK
from rheon.runtime.graph import Edge, Graph, Node, SideOutput
from rheon.runtime.specs import (
    ChangesSpec,
    DedupSpec,
    FilterSpec,
    MapBatchesSpec,
    ProcessSpec,
    ReduceSpec,
    RowSpec,
    RunningTopNSpec,
    SelectSpec,
    SinkSpec,
    UnionSpec,
    WindowSpec,
    WindowTopNSpec,
    WithColumnsSpec,
    WithTimeSpec,
)
from rheon.time.column import declared_time
from rheon.time.windows import Session, Sliding, Tumbling

__all__ = ["KeyedStream", "MatchStream", "Stream", "WindowedStream"]

Row = dict[str, Any]


class FlowGraph(Protocol):
    """What a stream needs of its :class:`~rheon.Flow`: its name and the graph it adds steps to
    (so this module does not import the one that defines ``Flow``, which imports it)."""

    name: str
    graph: Graph


class Stream:
    """A stream of records inside a :class:`~rheon.Flow`.

    Operators return new streams; nothing runs until ``flow.run()``. A stream can feed any
    number of operators and sinks (a graph, not a pipe).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("demo")
    >>> tx = flow.source(rh.io.Records([{"card": "a", "amount": 1500, "ts": 0}]), time="ts")
    >>> tx.schema
    Schema([('card', String), ('amount', Int64), ('ts', Int64)])
    >>> tx.time
    'ts'
    """

    def __init__(self, flow: FlowGraph, node: Node, tag: str = "main") -> None:
        self.flow = flow
        self.node = node
        self.tag = tag

    # -- what is known ---------------------------------------------------------------------

    @property
    def schema(self) -> pl.Schema | None:
        """Column names and types, when known before running (``None`` after a Python ``map``)."""
        if self.tag == "main":
            return self.node.schema
        return self.node.side_outputs[self.tag].schema

    @property
    def time(self) -> str | None:
        """The event-time column, if the stream has one."""
        if self.tag == "main":
            return self.node.time
        return self.node.side_outputs[self.tag].time

    @property
    def time_type(self) -> TimeType | None:
        if self.tag == "main":
            return self.node.time_type
        return self.node.side_outputs[self.tag].time_type

    def __repr__(self) -> str:
        tag = f"[{self.tag}]" if self.tag != "main" else ""
        return f"<Stream {self.node.label}{tag} time={self.time!r}>"

    # -- building ----------------------------------------------------------------------------

    def _edge(self) -> Edge:
        return Edge(self.node, self.tag)

    def _side(self) -> Side:
        """What a join needs to know of this stream (no keys)."""
        return Side(self._edge(), (), self.schema, self.time, self.time_type)

    def _add(self, node: Node) -> Stream:
        self.flow.graph.add(node)
        return Stream(self.flow, node)

    def _check_same_flow(self, other: Stream, where: str) -> None:
        if not isinstance(other, Stream):
            msg = f"{where}: expected a Stream (got {other!r})"
            raise FlowError(msg)
        if other.flow is not self.flow:
            msg = f"{where}: streams belong to different flows ('{self.flow.name}' and '{other.flow.name}')"
            raise FlowError(msg)

    def _columns(self, where: str, columns: Iterable[str]) -> None:
        schema = self.schema
        if schema is None:
            return
        for column in columns:
            if column not in schema:
                names = schema.names()
                msg = f"{where}: unknown column '{column}' {columns_hint(names)}.{did_you_mean(column, names)}"
                raise FlowError(msg)

    # -- stateless ---------------------------------------------------------------------------

    def filter(self, predicate: pl.Expr | Callable[[Row], bool], *, name: str | None = None) -> Stream:
        """Keep the records for which ``predicate`` holds.

        ``predicate`` is a Polars expression (vectorized; null counts as false) or a Python
        function of a record dict (flexible, slower).

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("f"); out = rh.io.Collect()
        >>> s = flow.source(rh.io.Records([{"amount": 500}, {"amount": 1500}]))
        >>> s.filter(rh.col("amount") > 1000).sink(out)
        >>> s.filter(lambda r: r["amount"] < 1000).sink(out)
        >>> flow.run(); out.rows
        [{'amount': 1500}, {'amount': 500}]
        """
        graph = self.flow.graph
        if isinstance(predicate, pl.Expr):
            op_name = graph.name_for("filter", name)
            where = f"filter '{op_name}'"
            out = infer(where, self.schema, lambda lf: lf.select(predicate))
            if out is not None and out.dtypes()[0] != pl.Boolean:
                msg = f"{where}: the predicate gives {out.dtypes()[0]}, expected Boolean. Try a comparison such as rh.col('x') > 0."
                raise FlowError(msg)
            node = Node(
                op_name,
                FilterSpec(predicate),
                [self._edge()],
                schema=self.schema,
                time=self.time,
                time_type=self.time_type,
            )
            return self._add(node)
        if callable(predicate):
            op_name = graph.name_for("filter", name)
            node = Node(
                op_name,
                RowSpec(RowStep("filter", op_name, predicate)),
                [self._edge()],
                schema=self.schema,
                time=self.time,
                time_type=self.time_type,
            )
            return self._add(node)
        msg = f"filter: expected a Polars expression or a function of a record (got {predicate!r})"
        raise FlowError(msg)

    def _python_step(self, kind: str, fn: Callable[[Row], Any], name: str | None) -> Stream:
        if not callable(fn):
            msg = f"{kind}: expected a function of a record dict (got {fn!r})"
            raise FlowError(msg)
        op_name = self.flow.graph.name_for(kind, name)
        node = Node(
            op_name,
            RowSpec(RowStep(kind, op_name, fn)),
            [self._edge()],
            time=self.time,
            time_type=self.time_type,
        )
        return self._add(node)

    def map(self, fn: Callable[[Row], Mapping[str, Any]], *, name: str | None = None) -> Stream:
        """Replace each record by ``fn(record)``, a dict.

        If ``fn`` raises or returns something other than a dict, the record goes to the
        dead-letter output and the flow goes on. To keep event time, keep the time column.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("m"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records([{"amount": 10}])).map(lambda r: {**r, "usd": r["amount"] * 1.1}).sink(out)
        >>> flow.run(); out.rows
        [{'amount': 10, 'usd': 11.0}]
        """
        return self._python_step("map", fn, name)

    def flat_map(self, fn: Callable[[Row], Iterable[Mapping[str, Any]]], *, name: str | None = None) -> Stream:
        """Replace each record by the records (dicts) that ``fn(record)`` returns: zero or more.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("w"); out = rh.io.Collect()
        >>> (flow.source(rh.io.Records([{"text": "to be or"}]))
        ...      .flat_map(lambda r: [{"w": w} for w in r["text"].split()]).sink(out))
        >>> flow.run(); [r["w"] for r in out.rows]
        ['to', 'be', 'or']
        """
        return self._python_step("flat_map", fn, name)

    def map_batches(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        same_rows: bool = True,
        schema: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> Stream:
        """Replace each batch of records by ``fn(batch)``: a Python function over a Polars
        DataFrame, called once per batch instead of once per record.

        For vectorized code that is not one Polars expression: a NumPy or scikit-learn model
        over columns, a client call that takes many keys at once. The contract, checked on
        every batch (a breach stops the run with an error naming this step):

        * ``same_rows=True`` (the default): one output row per input row, in order; each keeps
          its input row's place in event time. ``same_rows=False``: any rows (filter, explode,
          per-batch aggregates); they take the earliest watermark of the batch.
        * A stream with event time keeps its time column and type (with ``same_rows`` also its
          values); set a new time with :meth:`with_time` after.
        * ``schema=`` declares the output's columns and types (values are cast to them); without
          it, steps after this one learn the columns when the flow runs.

        If ``fn`` raises, it is run again on halves of the batch down to the records it fails
        on alone: those go to the dead letters with the exception, the others go on.

        Examples
        --------
        >>> import numpy as np
        >>> import rheon as rh
        >>> def zscore(batch):
        ...     v = batch["value"].to_numpy()
        ...     return batch.with_columns(z=(v - 10.0) / 2.0)
        >>> flow = rh.Flow("mb"); out = rh.io.Collect()
        >>> readings = flow.source(rh.io.Records([{"value": 9.0, "ts": 0}, {"value": 14.0, "ts": 1}]), time="ts")
        >>> readings.map_batches(zscore).sink(out)
        >>> flow.run(); out.rows
        [{'value': 9.0, 'ts': 0, 'z': -0.5}, {'value': 14.0, 'ts': 1, 'z': 2.0}]
        """
        if not callable(fn):
            msg = f"map_batches: expected a function of a Polars DataFrame (got {fn!r})"
            raise FlowError(msg)
        op_name = self.flow.graph.name_for("map_batches", name)
        where = f"map_batches '{op_name}'"
        declared: pl.Schema | None = None
        if schema is not None:
            try:
                declared = pl.Schema(schema)
            except (TypeError, ValueError) as exc:
                msg = f"{where}: schema must map column names to Polars types ({exc})"
                raise FlowError(msg) from exc
            if self.time is not None and self.time not in declared:
                msg = f"{where}: the declared schema has no event-time column {self.time!r}; keep it"
                raise FlowError(msg)
            if self.time is not None and self.schema is not None and declared[self.time] != self.schema[self.time]:
                msg = (
                    f"{where}: the declared schema makes the event-time column {self.time!r} "
                    f"{declared[self.time]}, not {self.schema[self.time]}; keep its type"
                )
                raise FlowError(msg)
        node = Node(
            op_name,
            MapBatchesSpec(fn, same_rows, self.time, declared),
            [self._edge()],
            schema=declared,
            time=self.time,
            time_type=self.time_type,
        )
        return self._add(node)

    def with_columns(self, *exprs: pl.Expr, **named: Any) -> Stream:
        """Add or replace columns with Polars expressions (vectorized).

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("wc"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records([{"amount": 10}])).with_columns(eur=rh.col("amount") * 0.9).sink(out)
        >>> flow.run(); out.rows
        [{'amount': 10, 'eur': 9.0}]
        """
        all_exprs = [*exprs, *(v.alias(k) if isinstance(v, pl.Expr) else pl.lit(v).alias(k) for k, v in named.items())]
        op_name = self.flow.graph.name_for("with_columns", None)
        where = f"with_columns '{op_name}'"
        for e in exprs:
            if not isinstance(e, pl.Expr):
                msg = f"{where}: expected Polars expressions (got {e!r}). Try rh.col('x') * 2 or name=rh.lit(1)."
                raise FlowError(msg)
        schema = infer(where, self.schema, lambda lf: lf.with_columns(all_exprs))
        time, time_type = self.time, self.time_type
        if schema is not None and time is not None and self.schema is not None and schema[time] != self.schema[time]:
            msg = (
                f"{where}: changes the type of the event-time column '{time}' from {self.schema[time]} "
                f"to {schema[time]}. Write the new value to another column, and make it the event time "
                "with .with_time(...) if it should be."
            )
            raise FlowError(msg)
        node = Node(
            op_name,
            WithColumnsSpec(tuple(all_exprs)),
            [self._edge()],
            schema=schema,
            time=time,
            time_type=time_type,
        )
        return self._add(node)

    def with_time(self, time: str | pl.Expr, *, max_delay: Duration = "0s", name: str | None = None) -> Stream:
        """Make ``time`` the stream's event-time column: a column name, or a Polars expression.

        An expression computes the column from each record (``rh.col("when").str.to_datetime()``
        replaces ``when``; add ``.alias("ts")`` to make a new column). The column must be int64
        epoch milliseconds or a Datetime; a record whose time is null, does not parse, or makes
        the expression fail goes to the dead letters with the value it had.

        The watermark that goes with it:

        - If this stream already has event time, its watermark carries over, ``max_delay``
          lower: a record's new time may be at most ``max_delay`` behind the watermark when it
          arrives (``0s``, the default, when the new column is the old time under another name,
          or later than it). Idle inputs and the end of input carry over too.
        - If it has none, the watermark is made here as a source makes it: the largest new time
          seen so far minus ``max_delay`` (``source.with_time(expr)`` gives what
          ``flow.source(..., time=expr)`` gives).

        A record whose new time is behind the watermark is not dropped here: the event-time
        operator after ``with_time`` (a window whose window has fired, a join, ``dedup``,
        ``match``) sends it to that operator's ``late()``. Streams whose time columns had
        different names can be merged with ``union`` once ``with_time`` gives them the same one.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("wt"); out = rh.io.Collect()
        >>> clicks = flow.source(rh.io.Records([{"page": "a", "ts": 1_000}, {"page": "b", "ts": 2_500}]), time="ts")
        >>> views = flow.source(rh.io.Records([{"page": "a", "when": "1970-01-01T00:00:01.500"}]))
        >>> views = views.with_time(rh.col("when").str.to_datetime(time_unit="ms").dt.epoch("ms").alias("ts"))
        >>> both = clicks.union(views.select("page", "ts"))
        >>> both.window(rh.tumbling("2s")).agg(n=rh.count()).sink(out)
        >>> flow.run(); out.rows
        [{'window_start': 0, 'window_end': 2000, 'n': 2}, {'window_start': 2000, 'window_end': 4000, 'n': 1}]
        """
        op_name = self.flow.graph.name_for("with_time", name)
        where = f"with_time '{op_name}'"
        column, expr, schema, time_type = declared_time(time, self.schema, where=where)
        delay_ms = to_ms(max_delay, what=f"{where}: max_delay")
        upstream, upstream_type = self.time, self.time_type
        node = Node(
            op_name,
            WithTimeSpec(column, expr, time_type, delay_ms, upstream, upstream_type),
            [self._edge()],
            schema=schema,
            time=column,
            time_type=time_type,
        )
        return self._add(node)

    def select(self, *columns: str | pl.Expr, name: str | None = None) -> Stream:
        """Keep only the given columns (names or Polars expressions), in that order.

        Dropping the event-time column makes a stream without event time.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("sel"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records([{"card": "a", "amount": 1, "ts": 0, "x": 1}])).select("card", "amount", "ts").sink(out)
        >>> flow.run(); out.rows
        [{'card': 'a', 'amount': 1, 'ts': 0}]
        """
        op_name = self.flow.graph.name_for("select", name)
        where = f"select '{op_name}'"
        if not columns:
            msg = f"{where}: name at least one column"
            raise FlowError(msg)
        exprs: list[pl.Expr] = []
        for c in columns:
            if isinstance(c, str):
                exprs.append(pl.col(c))
            elif isinstance(c, pl.Expr):
                exprs.append(c)
            else:
                msg = f"{where}: expected column names or Polars expressions (got {c!r})"
                raise FlowError(msg)
        schema = infer(where, self.schema, lambda lf: lf.select(exprs))
        time, time_type = self.time, self.time_type
        if (
            time is not None
            and schema is not None
            and (time not in schema or (self.schema is not None and schema[time] != self.schema[time]))
        ) or (time is not None and schema is None and time not in [c for c in columns if isinstance(c, str)]):
            time, time_type = None, None
        node = Node(
            op_name,
            SelectSpec(tuple(exprs)),
            [self._edge()],
            schema=schema,
            time=time,
            time_type=time_type,
        )
        return self._add(node)

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """Merge this stream with others into one.

        The result's watermark is the minimum of the inputs' (inputs that are idle or finished
        do not hold it back). All inputs must have the same event-time column, or none.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("u"); out = rh.io.Collect()
        >>> a = flow.source(rh.io.Records([{"x": 1}]))
        >>> b = flow.source(rh.io.Records([{"x": 2}]))
        >>> a.union(b).sink(out)
        >>> flow.run(); sorted(r["x"] for r in out.rows)
        [1, 2]
        """
        op_name = self.flow.graph.name_for("union", name)
        where = f"union '{op_name}'"
        if not others:
            msg = f"{where}: give at least one other stream"
            raise FlowError(msg)
        streams = [self, *others]
        for s in others:
            self._check_same_flow(s, where)
        times = {s.time for s in streams}
        if len(times) > 1:
            named = sorted(t for t in times if t is not None)
            desc = ", ".join(f"{s.node.label} has {s.time!r}" for s in streams)
            hint = (
                f".with_time(rh.col({named[1]!r}).alias({named[0]!r})) on the stream timed by {named[1]!r}"
                if len(named) > 1
                else f".with_time({named[0]!r}) on the streams without event time"
            )
            msg = f"{where}: inputs disagree on the event-time column ({desc}). Give them one with {hint}."
            raise FlowError(msg)
        types = {s.time_type.dtype for s in streams if s.time_type is not None}
        if len(types) > 1:
            msg = f"{where}: inputs have different event-time types ({', '.join(map(str, types))})"
            raise FlowError(msg)
        schemas = [s.schema for s in streams]
        schema = schemas[0] if all(sc is not None and sc == schemas[0] for sc in schemas) else None
        node = Node(
            op_name,
            UnionSpec(len(streams)),
            [s._edge() for s in streams],
            schema=schema,
            time=self.time,
            time_type=next((s.time_type for s in streams if s.time_type is not None), None),
        )
        return self._add(node)

    # -- keys and windows --------------------------------------------------------------------

    def key_by(self, *columns: str | Iterable[str]) -> KeyedStream:
        """Partition the stream by the values of one or more columns.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("k")
        >>> flow.source(rh.io.Records([{"card": "a", "ts": 0}]), time="ts").key_by("card").keys
        ('card',)
        """
        keys: list[str] = []
        for c in columns:
            if isinstance(c, str):
                keys.append(c)
            elif isinstance(c, Iterable):
                keys.extend(c)
            else:
                msg = f"key_by: expected column names (got {c!r})"
                raise FlowError(msg)
        if not keys:
            msg = 'key_by: name at least one key column, e.g. key_by("card")'
            raise FlowError(msg)
        if any(not isinstance(k, str) for k in keys):
            msg = f"key_by: expected column names (got {keys!r})"
            raise FlowError(msg)
        self._columns("key_by", keys)
        return KeyedStream(self, tuple(keys))

    def window(
        self,
        assigner: Tumbling | Sliding | Session,
        *,
        allowed_lateness: Duration | None = None,
        name: str | None = None,
    ) -> WindowedStream:
        """Window the whole stream (one global key); see :meth:`KeyedStream.window`.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("g"); out = rh.io.Collect()
        >>> rows = [{"ts": 100}, {"ts": 900}, {"ts": 1200}]
        >>> flow.source(rh.io.Records(rows), time="ts").window(rh.tumbling("1s")).agg(n=rh.count()).sink(out)
        >>> flow.run(); out.rows
        [{'window_start': 0, 'window_end': 1000, 'n': 2}, {'window_start': 1000, 'window_end': 2000, 'n': 1}]
        """
        return WindowedStream(self, (), assigner, allowed_lateness, name)

    def side_output(self, tag: str) -> Stream:
        """The rows a process function sent with ``ctx.output(tag, row)``.

        Examples
        --------
        >>> import rheon as rh
        >>> def split(record, ctx):
        ...     if record["amount"] < 0:
        ...         ctx.output("refunds", record)
        ...     else:
        ...         ctx.emit(record)
        >>> flow = rh.Flow("side"); out = rh.io.Collect(); refunds = rh.io.Collect()
        >>> rows = [{"card": "a", "amount": 5}, {"card": "a", "amount": -2}]
        >>> payments = flow.source(rh.io.Records(rows)).key_by("card").process(split)
        >>> payments.sink(out); payments.side_output("refunds").sink(refunds)
        >>> flow.run(); out.rows, refunds.rows
        ([{'card': 'a', 'amount': 5}], [{'card': 'a', 'amount': -2}])
        """
        if self.node.kind != "process" or self.tag != "main":
            msg = f"side_output(): {self.node.label} is not a process function; side outputs come from .process(...)"
            raise FlowError(msg)
        if not isinstance(tag, str) or not tag:
            msg = f"side_output(): the tag must be a non-empty string (got {tag!r})"
            raise FlowError(msg)
        key = f"side:{tag}"
        self.node.side_outputs.setdefault(key, SideOutput(None, self.time, self.time_type))
        return Stream(self.flow, self.node, key)

    def join(
        self,
        table: pl.DataFrame | str | Path,
        *,
        on: str | list[str],
        how: str = "inner",
        suffix: str = "_right",
        name: str | None = None,
    ) -> Stream:
        """Enrich records with the rows of a static table (a DataFrame or a Parquet/CSV/JSON-lines
        file) that share the ``on`` columns; ``how="left"`` keeps records with no match.

        Right columns whose names the stream already uses get ``suffix``. For a table that
        changes, join with a changelog stream: ``key_by(...).join(other.key_by(...).latest())``.

        Examples
        --------
        >>> import rheon as rh, polars as pl
        >>> merchants = pl.DataFrame({"merchant": ["m1", "m2"], "category": ["food", "books"]})
        >>> flow = rh.Flow("enrich"); out = rh.io.Collect()
        >>> tx = flow.source(rh.io.Records([{"merchant": "m2", "amount": 9}, {"merchant": "m9", "amount": 1}]))
        >>> tx.join(merchants, on="merchant", how="left").sink(out)
        >>> flow.run(); out.rows
        [{'merchant': 'm2', 'amount': 9, 'category': 'books'}, {'merchant': 'm9', 'amount': 1, 'category': None}]
        """
        op_name = self.flow.graph.name_for("lookup_join", name)
        return self._add(lookup_join_node(op_name, self._side(), table, on=on, how=how, suffix=suffix))

    def late(self) -> Stream:
        """The events that arrived after their window had closed (a window's side output).

        On a join, the records (of either side) that arrived behind the watermark.

        Examples
        --------
        >>> import rheon as rh
        >>> rows = [{"k": 1, "ts": 500}, {"k": 1, "ts": 5000}, {"k": 1, "ts": 600}]
        >>> flow = rh.Flow("late"); out = rh.io.Collect(); late = rh.io.Collect()
        >>> per_k = flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(n=rh.count())
        >>> per_k.sink(out); per_k.late().sink(late)
        >>> flow.run(); late.rows
        [{'k': 1, 'ts': 600}]
        """
        if self.node.kind == "with_time" and self.tag == "main":
            msg = (
                f"late(): {self.node.label} does not hold records back: a record behind its watermark "
                "goes on, and the window, join, dedup or match after it sends the records it can no "
                "longer place to its own late(). Call late() on that operator."
            )
            raise FlowError(msg)
        if "late" not in self.node.side_outputs or self.tag != "main":
            msg = (
                f"late(): {self.node.label} is not a window aggregation or a join, nor an event-time "
                "operator; late() is defined on the result of .window(...).agg(...), .join(...), .match(...), "
                ".dedup(...), .changes(...) and .top_n(...)."
            )
            raise FlowError(msg)
        return Stream(self.flow, self.node, "late")

    def repeats(self) -> Stream:
        """The records a ``dedup`` dropped as repeats, in event-time order (ties by arrival).

        Examples
        --------
        >>> import rheon as rh
        >>> rows = [{"card": "a", "ts": 0}, {"card": "a", "ts": 4_000}, {"card": "a", "ts": 12_000}]
        >>> flow = rh.Flow("rep"); kept = rh.io.Collect(); dropped = rh.io.Collect()
        >>> once = flow.source(rh.io.Records(rows), time="ts").key_by("card").dedup(within="10s")
        >>> once.sink(kept); once.repeats().sink(dropped)
        >>> flow.run(); [r["ts"] for r in kept.rows], [r["ts"] for r in dropped.rows]
        ([0, 12000], [4000])
        """
        if self.node.kind != "dedup" or self.tag != "main":
            msg = f"repeats(): {self.node.label} is not a dedup; repeats() is defined on the result of key_by(...).dedup(...)"
            raise FlowError(msg)
        self.node.side_outputs.setdefault(REPEATS, SideOutput(self.schema, self.time, self.time_type))
        return Stream(self.flow, self.node, REPEATS)

    def top_n(
        self,
        n: int,
        by: str | Sequence[str],
        *,
        descending: bool | Sequence[bool] = True,
        per_window: bool = True,
        allowed_lateness: Duration | None = None,
        name: str | None = None,
    ) -> Stream:
        """The ``n`` best rows of each window of a window's result, across keys, with their ``rank``.

        The stream must have ``window_start`` and ``window_end`` (a ``.window(...).agg(...)``).
        When the watermark passes a window's end, its ``n`` best rows by ``by`` (largest first,
        unless ``descending=False``; nulls last) come out with a ``rank`` column, 1 to ``n``;
        ties go by the key columns (the columns before ``window_start``) ascending, then
        arrival. If a window's result is updated (``allowed_lateness`` of the window, found by
        itself; give ``allowed_lateness=`` when the window is not right upstream), the window's
        new top ``n`` comes out again when it changes. Rows for a window whose lateness ran out
        go to ``.late()``. ``per_window=False`` ranks the whole stream instead: a running top
        ``n``, as ``key_by(...).top_n`` without a key. See ``docs/stream-tools.md``.

        Examples
        --------
        >>> import rheon as rh
        >>> views = [{"page": p, "ts": t} for p, t in
        ...          [("a", 1_000), ("b", 2_000), ("b", 3_000), ("c", 4_000), ("c", 5_000), ("c", 6_000), ("a", 61_000)]]
        >>> flow = rh.Flow("top"); out = rh.io.Collect()
        >>> per_page = (flow.source(rh.io.Records(views), time="ts").key_by("page")
        ...                 .window(rh.tumbling("1m")).agg(views=rh.count()))
        >>> per_page.top_n(2, by="views").sink(out)
        >>> flow.run(); [(r["window_start"], r["page"], r["views"], r["rank"]) for r in out.rows]
        [(0, 'c', 3, 1), (0, 'b', 2, 2), (60000, 'a', 1, 1)]
        """
        op_name = self.flow.graph.name_for("top_n", name)
        where = f"top_n '{op_name}'"
        if not isinstance(per_window, bool):
            msg = f"{where}: per_window must be True or False (got {per_window!r})"
            raise FlowError(msg)
        if not per_window:
            if allowed_lateness is not None:
                msg = f"{where}: allowed_lateness applies to per_window=True only (got {allowed_lateness!r})"
                raise FlowError(msg)
            return _running_top_n(self, (), op_name, n, by, descending)
        size, columns, desc = _top_n_args(self, where, n, by, descending)
        time, time_type, schema = _ordered_time(self, where)
        if schema is None or "window_start" not in schema or "window_end" not in schema:
            seen = f"(columns: {', '.join(schema.names())})" if schema is not None else "(columns not known)"
            msg = (
                f"{where}: per_window=True ranks the rows of each window, but the stream has no window_start and "
                f"window_end columns {seen}. Use it on a window's result: .window(...).agg(...).top_n(...); for a "
                "running top n use key_by(...).top_n(...) or per_window=False."
            )
            raise FlowError(msg)
        names = schema.names()
        key_columns = names[: names.index("window_start")]
        if allowed_lateness is not None:
            lateness = to_ms(allowed_lateness, what=f"{where}: allowed_lateness")
        else:
            lateness = _upstream_lateness(self)
        out_schema = pl.Schema({**dict(schema), RANK: pl.Int64()})
        node = Node(
            op_name,
            WindowTopNSpec(size, tuple(columns), tuple(desc), tuple(key_columns), lateness, time_type),
            [self._edge()],
            schema=out_schema,
            time=time,
            time_type=time_type,
            side_outputs={"late": SideOutput(schema, time, time_type)},
        )
        return self._add(node)

    # -- sinks -------------------------------------------------------------------------------

    def show(self, title: str, *, rows: int = 50, name: str | None = None) -> Show:
        """Show this stream on the web dashboard (``flow.run(ui=8080)``) under ``title``: its latest
        ``rows`` rows as a live table, and as a live line chart when they are window results
        (one line per key of the first numeric aggregate, over ``window_end``). Returns the
        :class:`~rheon.io.show.Show` sink, whose ``latest()`` gives the same rows.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("shown")
        >>> rows = [{"page": p, "ts": t} for p, t in [("a", 0), ("b", 500), ("a", 1500)]]
        >>> per_page = flow.source(rh.io.Records(rows), time="ts").key_by("page").window(rh.tumbling("1s")).agg(n=rh.count())
        >>> views = per_page.show("views per page")
        >>> flow.run(); [(r["page"], r["window_start"], r["n"]) for r in views.latest()]
        [('a', 0, 1), ('b', 0, 1), ('a', 1000, 1)]
        """
        if not isinstance(title, str) or not title.strip():
            msg = f"show: title must be a non-empty string (got {title!r})"
            raise FlowError(msg)
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            msg = f"show '{title}': rows must be a whole number >= 1 (got {rows!r})"
            raise FlowError(msg)
        shown = Show(title, rows=rows)
        self.sink(shown, name=name)
        return shown

    def sink(self, sink: Sink | Callable[[Row], object], *, name: str | None = None) -> None:
        """Send the stream to a sink (``rh.io.Collect()``, ``rh.io.Console()``, ...) or a function.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("s")
        >>> flow.source(rh.io.Records([{"x": 1}])).sink(print)
        >>> _ = flow.run()
        {'x': 1}
        """
        if not isinstance(sink, Sink):
            if callable(sink):
                sink = Callback(sink)
            else:
                msg = f"sink: expected a sink such as rh.io.Collect() or a function (got {sink!r})"
                raise FlowError(msg)
        op_name = self.flow.graph.name_for("sink", name)
        self.flow.graph.add(Node(op_name, SinkSpec(sink), [self._edge()]))


class KeyedStream:
    """A stream partitioned by key columns: windows and reduce run per key.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("k")
    >>> flow.source(rh.io.Records([{"a": 1, "b": 2, "ts": 0}]), time="ts").key_by("a", "b")
    <KeyedStream by ('a', 'b')>
    """

    def __init__(self, stream: Stream, keys: tuple[str, ...]) -> None:
        self.stream = stream
        self.keys = keys

    def _side(self) -> Side:
        """What a join or a match needs to know of this keyed stream."""
        stream = self.stream
        return Side(stream._edge(), self.keys, stream.schema, stream.time, stream.time_type)

    def __repr__(self) -> str:
        return f"<KeyedStream by {self.keys}>"

    def window(
        self,
        assigner: Tumbling | Sliding | Session,
        *,
        allowed_lateness: Duration | None = None,
        name: str | None = None,
    ) -> WindowedStream:
        """Group each key's events into event-time windows: ``rh.tumbling``, ``rh.sliding``, ``rh.session``.

        A window's result is emitted once, when the watermark passes its end. With
        ``allowed_lateness``, the window's state is kept that much longer and each late event
        emits an updated row; later events go to ``.late()``.

        Examples
        --------
        >>> import rheon as rh
        >>> rows = [{"k": 1, "ts": 500}, {"k": 1, "ts": 1500}, {"k": 1, "ts": 700}]
        >>> flow = rh.Flow("w"); out = rh.io.Collect()
        >>> (flow.source(rh.io.Records(rows), time="ts").key_by("k")
        ...      .window(rh.tumbling("1s"), allowed_lateness="1s").agg(n=rh.count()).sink(out))
        >>> flow.run(); [(r["window_start"], r["n"]) for r in out.rows]
        [(0, 1), (0, 2), (1000, 1)]
        """
        return WindowedStream(self.stream, self.keys, assigner, allowed_lateness, name)

    def process(self, fn: Any, *, on_timer: Any = None, name: str | None = None) -> Stream:
        """Run ``fn(record, ctx)`` for each record, with keyed state, timers and side outputs.

        ``ctx`` (:class:`~rheon.operators.process.ProcessContext`) gives the key
        (``ctx.key``), the record's event time and watermark, keyed state
        (``ctx.state("n", default=0)``, ``ctx.state.list(...)``, ``ctx.state.map(...)``, each
        with an optional ``ttl="1h"``), timers (``ctx.timers.register_event_time(ts)``,
        ``register_processing_time(ms)``), ``ctx.emit(row)`` and ``ctx.output(tag, row)``.
        ``on_timer(timestamp, ctx)`` runs when a timer fires. ``fn`` may also be an object with
        ``process(record, ctx)`` and ``on_timer(timestamp, ctx)`` methods (like Flink's
        ``KeyedProcessFunction``). State and timers are checkpointed.

        Examples
        --------
        Alert when a card spends more than 100 within 10 s of its first payment:

        >>> import rheon as rh
        >>> class Spend:
        ...     def process(self, record, ctx):
        ...         total = ctx.state("total", default=0)
        ...         if total.get() == 0:
        ...             ctx.timers.register_event_time(record["ts"] + 10_000)
        ...         total.set(total.get() + record["amount"])
        ...     def on_timer(self, timestamp, ctx):
        ...         spent = ctx.state("total").get()
        ...         if spent > 100:
        ...             ctx.emit({"card": ctx.key, "spent": spent, "at": timestamp})
        ...         ctx.state("total").clear()
        >>> rows = [{"card": "a", "amount": 80, "ts": 0}, {"card": "a", "amount": 30, "ts": 4_000},
        ...         {"card": "b", "amount": 5, "ts": 5_000}, {"card": "b", "amount": 1, "ts": 30_000}]
        >>> flow = rh.Flow("spend"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records(rows), time="ts").key_by("card").process(Spend()).sink(out)
        >>> flow.run(); out.rows
        [{'card': 'a', 'spent': 110, 'at': 10000}]
        """
        stream = self.stream
        op_name = stream.flow.graph.name_for("process", name)
        where = f"process '{op_name}'"
        process_fn, timer_fn = _process_callables(fn, on_timer, where)
        keys, time, time_type = list(self.keys), stream.time, stream.time_type

        def ttl_of(value: str) -> int:
            return to_ms(value, what=f"{where}: ttl")

        node = Node(
            op_name,
            ProcessSpec(tuple(keys), time, process_fn, timer_fn, time_type, ttl_of),
            [stream._edge()],
            time=time,
            time_type=time_type,
        )
        return stream._add(node)

    def join(
        self,
        other: KeyedStream | LatestByKey | pl.DataFrame | str | Path,
        *,
        between: tuple[Duration, Duration] | None = None,
        window: Tumbling | Sliding | Session | None = None,
        how: str = "inner",
        suffix: str = "_right",
        name: str | None = None,
    ) -> Stream:
        """Join with another keyed stream, a changelog stream's ``.latest()``, or a table.

        * ``between=("-5m", "+5m")`` — **interval join**: each left record pairs with the right
          records of its key whose time is within ``[left time - 5m, left time + 5m]``.
        * ``window=rh.tumbling("1m")`` — **window join**: left and right records of a key pair
          up when they fall in the same window; rows get ``window_start`` and ``window_end``.
        * ``other.key_by(...).latest()`` — **temporal join**: each left record gets the right
          side's latest value for its key as of the record's event time.
        * a DataFrame or file path — **lookup join** against a static table on the key columns.

        Output rows have the left columns, then the right ones (without the right keys; names
        already used get ``suffix``). With ``how="left"`` a left record that finds nothing
        comes out once, with nulls, when it can no longer find a match. Records behind the
        watermark go to ``.late()``. Buffers are state: checkpointed and bounded by the
        watermark.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("join")
        >>> pays = flow.source(rh.io.Records([{"card": "a", "amount": 9, "ts": 60_000},
        ...                                   {"card": "b", "amount": 1, "ts": 61_000}]), time="ts")
        >>> logins = flow.source(rh.io.Records([{"card": "a", "city": "Oslo", "ts": 30_000}]), time="ts")
        >>> out = rh.io.Collect()
        >>> (pays.key_by("card").join(logins.key_by("card"), between=("-5m", "0s"), how="left")
        ...      .sink(out))
        >>> flow.run(); out.rows
        [{'card': 'a', 'amount': 9, 'ts': 60000, 'city': 'Oslo', 'ts_right': 30000}, {'card': 'b', 'amount': 1, 'ts': 61000, 'city': None, 'ts_right': None}]
        """
        stream = self.stream
        if isinstance(other, pl.DataFrame | str | Path):
            return stream.join(other, on=list(self.keys), how=how, suffix=suffix, name=name)
        kind = (
            "temporal_join"
            if isinstance(other, LatestByKey)
            else ("window_join" if window is not None else "interval_join")
        )
        op_name = stream.flow.graph.name_for(kind, name)
        where = f"{kind} '{op_name}'"
        how = check_how(how, where)
        right = other.keyed if isinstance(other, LatestByKey) else other
        if not isinstance(right, KeyedStream):
            msg = (
                f"{where}: join with another keyed stream (b.key_by(...)), its .latest() for a temporal "
                f"join, or a table (DataFrame or file path) (got {other!r})"
            )
            raise FlowError(msg)
        stream._check_same_flow(right.stream, where)
        node = keyed_join_node(
            op_name, kind, self._side(), right._side(), between=between, window=window, how=how, suffix=suffix
        )
        return stream._add(node)

    def match(
        self,
        pattern: Pattern,
        *,
        after_match: str = "skip_past_last_event",
        measures: Mapping[str, pl.Expr] | None = None,
        name: str | None = None,
    ) -> MatchStream:
        """Find ``pattern`` (built with ``rheon.cep.begin``) in each key's events, in event-time order.

        Emits one row per match: the key column(s), ``match_start`` and ``match_end`` (times of
        the first and last matched event), then one column per step, named after it, holding
        the step's events as a list of structs. ``measures={"n": pl.col("fail").list.len()}``
        adds columns computed from those. ``after_match`` says where matching continues after
        a match: ``"skip_past_last_event"`` (default), ``"skip_to_next"``,
        ``"skip_to_first:<step>"``, ``"skip_to_last:<step>"`` or ``"no_skip"``, as in SQL's
        ``MATCH_RECOGNIZE``. Events wait until the watermark passes them; later ones are on
        ``.late()``, partial matches cut short by ``within`` on ``.timed_out()``. Open
        matches and buffered events are checkpointed. See ``docs/cep.md``.

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> logins = [{"user": "u1", "ok": ok, "ts": i * 1000} for i, ok in enumerate([0, 0, 0, 1, 0])]
        >>> brute_force = cep.begin("fail", rh.col("ok") == 0).times_or_more(3).next("success", rh.col("ok") == 1)
        >>> flow = rh.Flow("logins"); out = rh.io.Collect()
        >>> (flow.source(rh.io.Records(logins), time="ts").key_by("user")
        ...      .match(brute_force.within("5m"), measures={"fails": rh.col("fail").list.len()}).sink(out))
        >>> flow.run(); [(r["user"], r["match_start"], r["match_end"], r["fails"]) for r in out.rows]
        [('u1', 0, 3000, 3)]
        """
        op_name = self.stream.flow.graph.name_for("match", name)
        node = match_node(op_name, self._side(), pattern, after_match, measures)
        self.stream.flow.graph.add(node)
        return MatchStream(self.stream.flow, node)

    def latest(self) -> LatestByKey:
        """This changelog stream as a table of the latest value per key, for a temporal join.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("fx"); out = rh.io.Collect()
        >>> rates = flow.source(rh.io.Records([{"cur": "EUR", "rate": 1.10, "ts": 0},
        ...                                    {"cur": "EUR", "rate": 1.20, "ts": 5_000}]), time="ts")
        >>> pays = flow.source(rh.io.Records([{"cur": "EUR", "amount": 10, "ts": 3_000},
        ...                                   {"cur": "EUR", "amount": 10, "ts": 6_000}]), time="ts")
        >>> pays.key_by("cur").join(rates.key_by("cur").latest()).sink(out)
        >>> flow.run(); [(r["ts"], r["rate"]) for r in out.rows]
        [(3000, 1.1), (6000, 1.2)]
        """
        return LatestByKey(self)

    def reduce(self, fn: Callable[[Row, Row], Mapping[str, Any]], *, name: str | None = None) -> Stream:
        """Keep a running value per key: ``acc = fn(acc, record)``; emit each new ``acc``.

        The first record of a key is its first ``acc``. This is the streaming form of
        map-reduce: records are shuffled by key, and each key's reduce sees them in order.

        Examples
        --------
        >>> import rheon as rh
        >>> rows = [{"card": "a", "amount": 1}, {"card": "b", "amount": 5}, {"card": "a", "amount": 2}]
        >>> flow = rh.Flow("r"); out = rh.io.Collect()
        >>> (flow.source(rh.io.Records(rows)).key_by("card")
        ...      .reduce(lambda acc, r: {**r, "amount": acc["amount"] + r["amount"]}).sink(out))
        >>> flow.run(); out.rows
        [{'card': 'a', 'amount': 1}, {'card': 'b', 'amount': 5}, {'card': 'a', 'amount': 3}]
        """
        if not callable(fn):
            msg = f"reduce: expected a function fn(acc, record) -> dict (got {fn!r})"
            raise FlowError(msg)
        stream = self.stream
        op_name = stream.flow.graph.name_for("reduce", name)
        keys = self.keys
        node = Node(
            op_name,
            ReduceSpec(tuple(keys), fn),
            [stream._edge()],
            time=stream.time,
            time_type=stream.time_type,
        )
        return stream._add(node)

    def dedup(self, within: Duration, *, name: str | None = None) -> Stream:
        """Drop each key's repeats: a record passes unless a record of its key that passed came
        less than ``within`` before it (in event time); then it is a repeat and is dropped.

        Records wait until the watermark passes them and are handled per key in event-time
        order (ties by arrival), so the result does not depend on arrival order or batching
        (Flink's keep-first deduplication). Records that come after a later one was handled
        go to ``.late()``; the repeats are on ``.repeats()``. The state per key is the time of
        its last record that passed, checkpointed and cleared once ``within`` has gone by.
        See ``docs/stream-tools.md``.

        Examples
        --------
        >>> import rheon as rh
        >>> alerts = [{"card": "a", "ts": 0}, {"card": "b", "ts": 1_000}, {"card": "a", "ts": 60_000},
        ...           {"card": "a", "ts": 540_000}, {"card": "a", "ts": 600_000}]
        >>> flow = rh.Flow("once"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records(alerts), time="ts").key_by("card").dedup(within="10m").sink(out)
        >>> flow.run(); [(r["card"], r["ts"]) for r in out.rows]
        [('a', 0), ('b', 1000), ('a', 600000)]
        """
        stream = self.stream
        op_name = stream.flow.graph.name_for("dedup", name)
        where = f"dedup '{op_name}'"
        within_ms = to_ms(within, what=f"{where}: within")
        if within_ms <= 0:
            msg = f"{where}: within must be positive (got {within!r})"
            raise FlowError(msg)
        time, time_type, schema = _ordered_time(stream, where)
        node = Node(
            op_name,
            DedupSpec(tuple(self.keys), time, within_ms, time_type),
            [stream._edge()],
            schema=schema,
            time=time,
            time_type=time_type,
            side_outputs={"late": SideOutput(schema, time, time_type)},
        )
        return stream._add(node)

    def changes(self, col: str | Sequence[str], *, name: str | None = None) -> Stream:
        """Emit a record only when ``col`` (a column, or a list of them) differs from the key's
        previous record; a key's first record is emitted. Nulls equal nulls.

        Records wait until the watermark passes them and are handled per key in event-time
        order (ties by arrival); later ones go to ``.late()``. The state per key is its last
        value, checkpointed. Use it to turn a status stream into transitions (alert ->
        resolved). See ``docs/stream-tools.md``.

        Examples
        --------
        >>> import rheon as rh
        >>> checks = [{"host": "h1", "status": s, "ts": i * 1_000} for i, s in enumerate(["ok", "ok", "alert", "alert", "ok"])]
        >>> flow = rh.Flow("flips"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records(checks), time="ts").key_by("host").changes("status").sink(out)
        >>> flow.run(); [(r["status"], r["ts"]) for r in out.rows]
        [('ok', 0), ('alert', 2000), ('ok', 4000)]
        """
        stream = self.stream
        op_name = stream.flow.graph.name_for("changes", name)
        where = f"changes '{op_name}'"
        columns = _column_list(stream, where, "col", col)
        time, time_type, schema = _ordered_time(stream, where)
        node = Node(
            op_name,
            ChangesSpec(tuple(self.keys), time, tuple(columns), time_type),
            [stream._edge()],
            schema=schema,
            time=time,
            time_type=time_type,
            side_outputs={"late": SideOutput(schema, time, time_type)},
        )
        return stream._add(node)

    def top_n(
        self,
        n: int,
        by: str | Sequence[str],
        *,
        descending: bool | Sequence[bool] = True,
        name: str | None = None,
    ) -> Stream:
        """Each key's ``n`` best records so far by ``by``, emitted (all of them, with their
        ``rank``, 1 to ``n``) each time they change.

        Records wait until the watermark passes them and are handled per key in event-time
        order; a record enters when it beats the key's ``n``-th (largest first, unless
        ``descending=False``; nulls last; on a tie the earlier record stays ahead). The output
        is an update stream, a key's ``(key, rank)`` rows replacing the ones before, so it has
        no event time. State per key: its best ``n`` records, checkpointed. For the best rows
        of each window across keys, use ``.window(...).agg(...).top_n(...)``.

        Examples
        --------
        >>> import rheon as rh
        >>> pays = [{"card": "a", "amount": a, "ts": i * 1_000} for i, a in enumerate([5, 9, 1, 7])]
        >>> flow = rh.Flow("biggest"); out = rh.io.Collect()
        >>> flow.source(rh.io.Records(pays), time="ts").key_by("card").top_n(2, by="amount").sink(out)
        >>> flow.run(); [(r["amount"], r["rank"]) for r in out.rows]
        [(5, 1), (9, 1), (5, 2), (9, 1), (7, 2)]
        """
        stream = self.stream
        op_name = stream.flow.graph.name_for("top_n", name)
        return _running_top_n(stream, self.keys, op_name, n, by, descending)


class MatchStream(Stream):
    """The matches of a pattern (from :meth:`KeyedStream.match`), with its side outputs.

    Examples
    --------
    >>> import rheon as rh
    >>> from rheon import cep
    >>> rows = [{"id": 1, "type": "order", "ts": 0}, {"id": 2, "type": "order", "ts": 0},
    ...         {"id": 2, "type": "payment", "ts": 60_000}, {"id": 3, "type": "order", "ts": 3_600_000}]
    >>> unpaid = cep.begin("order", rh.col("type") == "order").followed_by("paid", rh.col("type") == "payment")
    >>> flow = rh.Flow("orders"); paid = rh.io.Collect(); late_payers = rh.io.Collect()
    >>> m = flow.source(rh.io.Records(rows), time="ts").key_by("id").match(unpaid.within("15m"))
    >>> m.sink(paid); m.timed_out().sink(late_payers)
    >>> flow.run(); [r["id"] for r in paid.rows], [r["id"] for r in late_payers.rows]
    ([2], [1, 3])
    """

    def timed_out(self) -> Stream:
        """The partial matches that ``within`` cut short, when the watermark reached their first
        event's time + ``within`` (at the end of input, the ones still open), with the steps
        matched so far (for "A and then no B within T" rules). Same columns as the matches.

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> rows = [{"host": "h", "cpu": 95, "ts": 0}, {"host": "h", "cpu": 97, "ts": 10_000}]
        >>> hot = cep.begin("hot", rh.col("cpu") > 90).times(3).within("1m")
        >>> flow = rh.Flow("hot"); cut = rh.io.Collect()
        >>> m = flow.source(rh.io.Records(rows), time="ts").key_by("host").match(hot)
        >>> m.sink(rh.io.Collect()); m.timed_out().sink(cut)
        >>> flow.run(); [(r["host"], r["match_start"], len(r["hot"])) for r in cut.rows]  # two attempts
        [('h', 0, 2), ('h', 10000, 1)]
        """
        return Stream(self.flow, self.node, "timed_out")


def _process_callables(fn: Any, on_timer: Any, where: str) -> tuple[Callable[..., None], Callable[..., None] | None]:
    """Accept a function, or an object with ``process`` (and ``on_timer``) methods."""
    if (not callable(fn) and callable(getattr(fn, "process", None))) or (
        callable(getattr(fn, "process", None)) and not isinstance(fn, type)
    ):
        on_timer = on_timer or getattr(fn, "on_timer", None)
        fn = fn.process
    if not callable(fn):
        msg = f"{where}: expected fn(record, ctx) or an object with process(record, ctx) (got {fn!r})"
        raise FlowError(msg)
    if on_timer is not None and not callable(on_timer):
        msg = f"{where}: on_timer must be a function on_timer(timestamp, ctx) (got {on_timer!r})"
        raise FlowError(msg)
    return fn, on_timer


class LatestByKey:
    """A changelog stream read as a table: the latest value per key as of each event's time.

    Made by :meth:`KeyedStream.latest`; join a keyed stream with it for a temporal join.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("t")
    >>> rates = flow.source(rh.io.Records([{"cur": "EUR", "rate": 1.1, "ts": 0}]), time="ts")
    >>> rates.key_by("cur").latest()
    <LatestByKey of source 'source_1' by ('cur',)>
    """

    def __init__(self, keyed: KeyedStream) -> None:
        self.keyed = keyed

    def __repr__(self) -> str:
        return f"<LatestByKey of {self.keyed.stream.node.label} by {self.keyed.keys}>"


class WindowedStream:
    """A keyed stream grouped into windows; ``.agg(...)`` says what to compute per window.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("w")
    >>> flow.source(rh.io.Records([{"k": 1, "ts": 0}]), time="ts").key_by("k").window(rh.tumbling("1m"))
    <WindowedStream tumbling(60000ms) by ('k',)>
    """

    def __init__(
        self,
        stream: Stream,
        keys: tuple[str, ...],
        assigner: Tumbling | Sliding | Session,
        allowed_lateness: Duration | None,
        name: str | None,
    ) -> None:
        if not isinstance(assigner, Tumbling | Sliding | Session):
            msg = f"window: expected rh.tumbling(...), rh.sliding(...) or rh.session(...) (got {assigner!r})"
            raise FlowError(msg)
        self.stream = stream
        self.keys = keys
        self.assigner = assigner
        self.name = name
        what = f"window '{name}'" if name else "window"
        self.lateness_ms = (
            to_ms(allowed_lateness, what=f"{what}: allowed_lateness") if allowed_lateness is not None else 0
        )
        if stream.time is None:
            msg = (
                f"{what}: the stream has no event-time column, so windows cannot close. "
                'Declare one where the data comes in: flow.source(..., time="ts").'
            )
            raise FlowError(msg)

    def __repr__(self) -> str:
        return f"<WindowedStream {self.assigner!r} by {self.keys}>"

    def agg(self, **aggs: Aggregation | Aggregate) -> Stream:
        """Aggregate each window: ``agg(n=rh.count(), total=rh.sum("amount"))``.

        Output rows are the key column(s), ``window_start``, ``window_end``, then the
        aggregates in the order given. Window bounds have the time column's type. The result is
        a stream whose event time is ``window_start``; its late events are on ``.late()``.

        Examples
        --------
        >>> import rheon as rh
        >>> rows = [{"card": "a", "amount": 5.0, "ts": 1000}, {"card": "a", "amount": 7.0, "ts": 2000}]
        >>> flow = rh.Flow("a"); out = rh.io.Collect()
        >>> (flow.source(rh.io.Records(rows), time="ts").key_by("card").window(rh.tumbling("1m"))
        ...      .agg(n=rh.count(), total=rh.sum("amount"), hi=rh.max("amount"), avg=rh.mean("amount")).sink(out))
        >>> flow.run(); out.rows
        [{'card': 'a', 'window_start': 0, 'window_end': 60000, 'n': 2, 'total': 12.0, 'hi': 7.0, 'avg': 6.0}]
        """
        stream = self.stream
        graph = stream.flow.graph
        op_name = graph.name_for("window", self.name)
        where = f"window '{op_name}'"
        if not aggs:
            msg = f"{where}: agg() needs at least one aggregation, e.g. .agg(n=rh.count())"
            raise FlowError(msg)
        reserved = {*self.keys, "window_start", "window_end"}
        runs: dict[str, Aggregation] = {
            name: agg.as_aggregation() if isinstance(agg, Aggregate) else agg for name, agg in aggs.items()
        }
        for field_name, agg in runs.items():
            if not isinstance(agg, Aggregation):
                msg = f"{where}: aggregation '{field_name}' must be rh.count(), rh.sum(col), ... (got {agg!r})"
                raise FlowError(msg)
            if field_name in reserved:
                msg = f"{where}: aggregation name '{field_name}' clashes with a key or window column; pick another name"
                raise FlowError(msg)
            agg.check(where, field_name, stream.schema)
        in_schema = stream.schema
        time = stream.time
        assert time is not None
        time_type = stream.time_type
        keys, assigner, lateness = list(self.keys), self.assigner, self.lateness_ms
        out_schema = None
        if in_schema is not None and time_type is not None:
            fields: dict[str, pl.DataType] = {k: in_schema[k] for k in keys}
            fields["window_start"] = time_type.dtype
            fields["window_end"] = time_type.dtype
            for field_name, agg in runs.items():
                dtype = agg.result_dtype(in_schema[agg.column] if agg.column else None)
                if dtype is None:
                    fields = {}
                    break
                fields[field_name] = dtype
            out_schema = pl.Schema(fields) if fields else None

        node = Node(
            op_name,
            WindowSpec(tuple(keys), time, assigner, runs, lateness, time_type),
            [stream._edge()],
            schema=out_schema,
            time="window_start",
            time_type=time_type,
            side_outputs={"late": SideOutput(in_schema, time, time_type)},
        )
        return stream._add(node)


def _ordered_time(stream: Stream, where: str) -> tuple[str, TimeType | None, pl.Schema | None]:
    """The stream's event-time column (an operator that orders records needs one), its type and
    the stream's schema."""
    if stream.time is None:
        msg = (
            f"{where}: the stream has no event-time column, so records cannot be put in order. "
            'Declare one where the data comes in: flow.source(..., time="ts").'
        )
        raise FlowError(msg)
    return stream.time, stream.time_type, stream.schema


def _column_list(stream: Stream, where: str, field: str, value: object) -> list[str]:
    """``value`` as a non-empty list of the stream's columns (one name, or a list of names)."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else None
    if not names or not all(isinstance(c, str) for c in names):
        msg = f"{where}: {field} must be a column name or a list of column names (got {value!r})"
        raise FlowError(msg)
    schema = stream.schema
    if schema is not None:
        for column in names:
            if column not in schema:
                known = schema.names()
                msg = (
                    f"{where}: unknown column '{column}' in {field}= {columns_hint(known)}."
                    f"{did_you_mean(column, known)}"
                )
                raise FlowError(msg)
    return names


def _top_n_args(
    stream: Stream, where: str, n: object, by: object, descending: object
) -> tuple[int, list[str], list[bool]]:
    """``n``, ``by`` and ``descending`` of a top_n, checked."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        msg = f"{where}: n must be a whole number >= 1 (got {n!r})"
        raise FlowError(msg)
    columns = _column_list(stream, where, "by", by)
    if isinstance(descending, bool):
        desc = [descending] * len(columns)
    elif isinstance(descending, list | tuple) and len(descending) == len(columns):
        desc = list(descending)
    else:
        desc = []
    if not desc or not all(isinstance(d, bool) for d in desc):
        msg = f"{where}: descending must be True, False or one of them per column of by= (got {descending!r})"
        raise FlowError(msg)
    schema = stream.schema
    if schema is not None and RANK in schema:
        msg = f"{where}: the stream already has a column '{RANK}', which top_n adds; rename it first"
        raise FlowError(msg)
    return n, columns, desc


def _running_top_n(
    stream: Stream, keys: Sequence[str], op_name: str, n: object, by: object, descending: object
) -> Stream:
    """The node of a running top n (per key, or of the whole stream with no keys)."""
    where = f"top_n '{op_name}'"
    size, columns, desc = _top_n_args(stream, where, n, by, descending)
    time, time_type, schema = _ordered_time(stream, where)
    out_schema = pl.Schema({**dict(schema), RANK: pl.Int64()}) if schema is not None else None
    node = Node(
        op_name,
        RunningTopNSpec(tuple(keys), time, size, tuple(columns), tuple(desc), time_type),
        [stream._edge()],
        schema=out_schema,
        side_outputs={"late": SideOutput(schema, time, time_type)},
    )
    return stream._add(node)


def _upstream_lateness(stream: Stream) -> int:
    """The ``allowed_lateness`` (ms) of the window aggregation ``stream`` comes from, through
    filters and column steps; 0 when it does not come right from one."""
    node, tag = stream.node, stream.tag
    while tag == "main" and node.kind in ("filter", "with_columns", "select") and len(node.inputs) == 1:
        node, tag = node.inputs[0].node, node.inputs[0].tag
    if tag != "main" or not isinstance(node.spec, WindowSpec):
        return 0
    return node.spec.lateness_ms
