"""From a step's spec to the operator that runs it.

The runtime, not the API, decides how a step runs: which implementation (pane windows or
session windows, the join kind), and which state backend keyed operators keep their state in
(``memory`` or ``rocksdb``, under the checkpoint directory). Sources, sinks and fused Python
steps are built by the executor, which owns their run-time wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rheon.cep.operator import MatchOperator
from rheon.io.base import BuildContext
from rheon.operators.base import Operator
from rheon.operators.batchfn import MapBatches
from rheon.operators.changes import Changes
from rheon.operators.dedup import REPEATS, Dedup
from rheon.operators.eventtime import WithTime
from rheon.operators.join import IntervalJoin, LookupJoin, TemporalJoin, WindowJoin
from rheon.operators.process import KeyedProcess
from rheon.operators.reduce import Reduce
from rheon.operators.stateless import ExprFilter, Select, WithColumns
from rheon.operators.topn import RunningTopN, WindowTopN
from rheon.operators.union import Union
from rheon.operators.window import PaneWindowOperator, SessionWindowOperator
from rheon.runtime.graph import Node
from rheon.runtime.specs import (
    ChangesSpec,
    DedupSpec,
    FilterSpec,
    JoinSpec,
    LookupJoinSpec,
    MapBatchesSpec,
    MatchSpec,
    ProcessSpec,
    ReduceSpec,
    RunningTopNSpec,
    SelectSpec,
    Spec,
    UnionSpec,
    WindowSpec,
    WindowTopNSpec,
    WithColumnsSpec,
    WithTimeSpec,
)
from rheon.state.backends import KeyedStateBackend, make_backend
from rheon.time.column import EventTimeColumn
from rheon.time.windows import Session

__all__ = ["build_operator"]


def _backend(ctx: BuildContext) -> KeyedStateBackend:
    return make_backend(ctx.state_backend, ctx.state_dir)


def _window(node: Node, spec: WindowSpec, ctx: BuildContext) -> Operator:
    kind = SessionWindowOperator if isinstance(spec.assigner, Session) else PaneWindowOperator
    return kind(node.name, list(spec.keys), spec.time, dict(spec.aggs), spec.lateness_ms, spec.assigner, spec.time_type)


def _join(node: Node, spec: JoinSpec, ctx: BuildContext) -> Operator:
    common = (
        node.name,
        list(spec.left_keys),
        list(spec.right_keys),
        spec.left_time,
        spec.right_time,
        spec.how,
        spec.suffix,
        spec.time_type,
    )
    if spec.between is not None:
        return IntervalJoin(*common, *spec.between)
    if spec.window is not None:
        return WindowJoin(*common, spec.window)
    return TemporalJoin(*common)


def _with_time(node: Node, spec: WithTimeSpec, ctx: BuildContext) -> Operator:
    column = EventTimeColumn(spec.column, where=node.label, expr=spec.expr, time_type=spec.time_type)
    return WithTime(node.name, column, spec.max_delay_ms, spec.upstream, spec.upstream_type)


_BUILDERS: dict[type[Spec], Callable[[Node, Any, BuildContext], Operator]] = {
    FilterSpec: lambda node, spec, ctx: ExprFilter(node.name, spec.predicate),
    MapBatchesSpec: lambda node, spec, ctx: MapBatches(
        node.name, spec.fn, same_rows=spec.same_rows, time=spec.time, schema=spec.schema
    ),
    WithColumnsSpec: lambda node, spec, ctx: WithColumns(node.name, list(spec.exprs)),
    SelectSpec: lambda node, spec, ctx: Select(node.name, list(spec.exprs)),
    WithTimeSpec: _with_time,
    UnionSpec: lambda node, spec, ctx: Union(node.name, spec.inputs),
    WindowSpec: _window,
    WindowTopNSpec: lambda node, spec, ctx: WindowTopN(
        node.name,
        spec.n,
        list(spec.by),
        list(spec.descending),
        list(spec.key_columns),
        spec.lateness_ms,
        spec.time_type,
    ),
    RunningTopNSpec: lambda node, spec, ctx: RunningTopN(
        node.name,
        list(spec.keys),
        spec.time,
        spec.n,
        list(spec.by),
        list(spec.descending),
        spec.time_type,
        _backend(ctx),
    ),
    ProcessSpec: lambda node, spec, ctx: KeyedProcess(
        node.name,
        list(spec.keys),
        spec.time,
        spec.process_fn,
        spec.timer_fn,
        ctx.clock,
        spec.time_type,
        spec.ttl_of,
        _backend(ctx),
    ),
    ReduceSpec: lambda node, spec, ctx: Reduce(node.name, list(spec.keys), spec.fn, _backend(ctx)),
    DedupSpec: lambda node, spec, ctx: Dedup(
        node.name,
        list(spec.keys),
        spec.time,
        spec.within_ms,
        spec.time_type,
        _backend(ctx),
        repeats=REPEATS in node.side_outputs,
    ),
    ChangesSpec: lambda node, spec, ctx: Changes(
        node.name, list(spec.keys), spec.time, list(spec.columns), spec.time_type, _backend(ctx)
    ),
    JoinSpec: _join,
    LookupJoinSpec: lambda node, spec, ctx: LookupJoin(
        node.name, spec.table, list(spec.keys), list(spec.keys), spec.how, spec.suffix
    ),
    MatchSpec: lambda node, spec, ctx: MatchOperator(
        node.name,
        list(spec.keys),
        spec.time,
        spec.pattern,
        spec.after_match,
        spec.time_type,
        dict(spec.measures),
        _backend(ctx),
    ),
}


def build_operator(node: Node, ctx: BuildContext) -> Operator:
    """The operator that runs ``node``'s step.

    Examples
    --------
    >>> import polars as pl
    >>> from rheon.runtime.specs import FilterSpec
    >>> node = Node("big", FilterSpec(pl.col("amount") > 100))
    >>> build_operator(node, BuildContext(flow="f", operator="big")).label
    "filter 'big'"
    """
    builder = _BUILDERS.get(type(node.spec))
    if builder is None:
        msg = f"{node.label}: no operator runs a {type(node.spec).__name__}"
        raise TypeError(msg)
    return builder(node, node.spec, ctx)
