"""Building a CEP match node: ``KeyedStream.match`` calls into here."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from rheon.api._side import Side
from rheon.cep.operator import TIMED_OUT, parse_after_match
from rheon.cep.pattern import Pattern
from rheon.core.errors import FlowError
from rheon.runtime.graph import Node, SideOutput
from rheon.runtime.specs import MatchSpec

__all__ = ["match_node"]


def match_node(
    op_name: str,
    keyed: Side,
    pattern: Pattern,
    after_match: str,
    measures: Mapping[str, pl.Expr] | None,
) -> Node:
    """The node of ``keyed.match(pattern, ...)``, checked."""
    where = f"match '{op_name}'"
    if not isinstance(pattern, Pattern):
        msg = f"{where}: expected a pattern built with cep.begin(...) (got {pattern!r})"
        raise FlowError(msg)
    time, time_type, schema = keyed.time, keyed.time_type, keyed.schema
    if time is None:
        msg = (
            f"{where}: the stream has no event-time column, so events cannot be put in order. "
            'Declare one where the data comes in: flow.source(..., time="ts").'
        )
        raise FlowError(msg)
    keys = list(keyed.keys)
    reserved = {k: f"key column {k!r}" for k in keys}
    reserved |= {"match_start": "output column 'match_start'", "match_end": "output column 'match_end'"}
    pattern.check(where, schema, reserved)
    parse_after_match(after_match, pattern.names, where)
    measures = dict(measures or {})
    for field, expr in measures.items():
        if not isinstance(expr, pl.Expr):
            msg = f"{where}: measure {field!r} must be a Polars expression over the output columns (got {expr!r})"
            raise FlowError(msg)
        if field in reserved or field in pattern.names:
            msg = f"{where}: measure name {field!r} clashes with an output column; pick another"
            raise FlowError(msg)
    out_schema = None
    if schema is not None and time_type is not None:
        struct = pl.Struct(schema)
        fields: dict[str, pl.DataType] = {k: schema[k] for k in keys}
        fields["match_start"] = time_type.dtype
        fields["match_end"] = time_type.dtype
        fields |= {step: pl.List(struct) for step in pattern.names}
        out_schema = pl.Schema(fields)
        if measures:
            try:
                out_schema = pl.DataFrame(schema=out_schema).with_columns(**measures).schema
            except pl.exceptions.PolarsError as exc:
                msg = f"{where}: a measure does not apply to the match columns ({', '.join(out_schema)}): {exc}"
                raise FlowError(msg) from exc
    return Node(
        op_name,
        MatchSpec(tuple(keys), time, pattern, after_match, time_type, measures),
        [keyed.edge],
        schema=out_schema,
        time="match_start",
        time_type=time_type,
        side_outputs={
            "late": SideOutput(schema, time, time_type),
            TIMED_OUT: SideOutput(out_schema, "match_start", time_type),  # partial matches, same columns
        },
    )
