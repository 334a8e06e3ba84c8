"""What each step of a flow does, as data: the vocabulary of the logical plan.

The API checks what the user wrote and records it as a spec per step: a frozen dataclass of the
step's parameters (columns, durations in milliseconds, the pattern, the aggregations...).
Nothing in a spec runs or holds state. The runtime reads specs to plan (fusion, which sources
compute per-record watermarks), to build each step's operator (``runtime/build.py`` picks the
implementation and the state backend), and to describe the flow (``flow.explain()``; later the
web page's graph).

Examples
--------
>>> import polars as pl
>>> spec = FilterSpec(pl.col("amount") > 100)
>>> spec.kind, spec.uses_event_time
('filter', False)
>>> spec.describe()
'[(col("amount")) > (dyn int: 100)]'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from rheon.cep.pattern import Pattern
from rheon.core.eventtime import TimeType
from rheon.io.base import Sink, Source
from rheon.operators.aggregations import Aggregation
from rheon.operators.rowfn import RowStep
from rheon.time.windows import Session, Sliding, Tumbling

__all__ = [
    "ChangesSpec",
    "DeadLettersSpec",
    "DedupSpec",
    "FilterSpec",
    "JoinSpec",
    "LookupJoinSpec",
    "MapBatchesSpec",
    "MatchSpec",
    "ProcessSpec",
    "ReduceSpec",
    "RowSpec",
    "RunningTopNSpec",
    "SelectSpec",
    "SinkSpec",
    "SourceSpec",
    "Spec",
    "UnionSpec",
    "WindowSpec",
    "WindowTopNSpec",
    "WithColumnsSpec",
    "WithTimeSpec",
]


def _exprs(exprs: tuple[pl.Expr, ...]) -> str:
    return ", ".join(str(e) for e in exprs)


def _keys(keys: tuple[str, ...]) -> str:
    return ", ".join(keys) if keys else "-"


class Spec:
    """A step of a flow, as data."""

    KIND: ClassVar[str] = "operator"

    @property
    def kind(self) -> str:
        """The step's kind, as messages name it: ``"window"`` in ``window 'per_card'``."""
        return self.KIND

    @property
    def uses_event_time(self) -> bool:
        """Whether the step needs per-record watermarks from the sources upstream."""
        return False

    def describe(self) -> str:
        """The step's parameters in one short line (``flow.explain()``)."""
        return ""


@dataclass(frozen=True, eq=False)
class SourceSpec(Spec):
    """Where records come from, and how their event time is found."""

    KIND: ClassVar[str] = "source"
    source: Source
    time_expr: pl.Expr | None = None
    max_delay_ms: int = 0
    idle_timeout_ms: int | None = None

    def describe(self) -> str:
        parts = [repr(self.source)]
        if self.time_expr is not None:
            parts.append(f"time={self.time_expr}")
        if self.max_delay_ms:
            parts.append(f"max_delay={self.max_delay_ms}ms")
        if self.idle_timeout_ms is not None:
            parts.append(f"idle_timeout={self.idle_timeout_ms}ms")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class SinkSpec(Spec):
    """Where records go."""

    KIND: ClassVar[str] = "sink"
    sink: Sink

    def describe(self) -> str:
        return type(self.sink).__name__


@dataclass(frozen=True, eq=False)
class DeadLettersSpec(Spec):
    """The flow's dead-letter stream."""

    KIND: ClassVar[str] = "dead_letters"


@dataclass(frozen=True, eq=False)
class RowSpec(Spec):
    """A Python function per record: ``filter``, ``map`` or ``flat_map`` (fused when in a row)."""

    step: RowStep

    @property
    def kind(self) -> str:
        return self.step.kind

    def describe(self) -> str:
        return getattr(self.step.fn, "__qualname__", type(self.step.fn).__name__)


@dataclass(frozen=True, eq=False)
class MapBatchesSpec(Spec):
    """A Python function over a whole batch's records, as a DataFrame (``map_batches``)."""

    KIND: ClassVar[str] = "map_batches"
    fn: Callable[[pl.DataFrame], pl.DataFrame]
    same_rows: bool
    time: str | None
    """The event-time column the function must keep (``None``: the stream has no event time)."""
    schema: pl.Schema | None

    def describe(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"{name}, {'same rows' if self.same_rows else 'rows may change'}"


@dataclass(frozen=True, eq=False)
class FilterSpec(Spec):
    """Keep the records for which a Polars predicate holds."""

    KIND: ClassVar[str] = "filter"
    predicate: pl.Expr

    def describe(self) -> str:
        return str(self.predicate)


@dataclass(frozen=True, eq=False)
class WithColumnsSpec(Spec):
    """Add or replace columns with Polars expressions."""

    KIND: ClassVar[str] = "with_columns"
    exprs: tuple[pl.Expr, ...]

    def describe(self) -> str:
        return _exprs(self.exprs)


@dataclass(frozen=True, eq=False)
class SelectSpec(Spec):
    """Keep only the given columns or expressions."""

    KIND: ClassVar[str] = "select"
    exprs: tuple[pl.Expr, ...]

    def describe(self) -> str:
        return _exprs(self.exprs)


@dataclass(frozen=True, eq=False)
class WithTimeSpec(Spec):
    """A new event-time column (``stream.with_time``)."""

    KIND: ClassVar[str] = "with_time"
    column: str
    expr: pl.Expr | None
    time_type: TimeType | None
    max_delay_ms: int
    upstream: str | None
    """The input's event-time column; ``None`` when the input has none."""
    upstream_type: TimeType | None

    @property
    def uses_event_time(self) -> bool:
        return self.upstream is not None

    def describe(self) -> str:
        what = str(self.expr) if self.expr is not None else repr(self.column)
        return f"{what} max_delay={self.max_delay_ms}ms"


@dataclass(frozen=True, eq=False)
class UnionSpec(Spec):
    """Several streams into one."""

    KIND: ClassVar[str] = "union"
    inputs: int


@dataclass(frozen=True, eq=False)
class WindowSpec(Spec):
    """Keyed event-time windows and their aggregations."""

    KIND: ClassVar[str] = "window"
    keys: tuple[str, ...]
    time: str
    assigner: Tumbling | Sliding | Session
    aggs: Mapping[str, Aggregation]
    lateness_ms: int
    time_type: TimeType | None

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        aggs = ", ".join(f"{name}={agg!r}" for name, agg in self.aggs.items())
        late = f" allowed_lateness={self.lateness_ms}ms" if self.lateness_ms else ""
        return f"{self.assigner!r} by {_keys(self.keys)}: {aggs}{late}"


@dataclass(frozen=True, eq=False)
class WindowTopNSpec(Spec):
    """The best rows of each window of a window's result, across keys."""

    KIND: ClassVar[str] = "top_n"
    n: int
    by: tuple[str, ...]
    descending: tuple[bool, ...]
    key_columns: tuple[str, ...]
    lateness_ms: int
    time_type: TimeType | None

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{self.n} per window by {_keys(self.by)}"


@dataclass(frozen=True, eq=False)
class RunningTopNSpec(Spec):
    """A running top n per key (or of the whole stream)."""

    KIND: ClassVar[str] = "top_n"
    keys: tuple[str, ...]
    time: str
    n: int
    by: tuple[str, ...]
    descending: tuple[bool, ...]
    time_type: TimeType | None

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{self.n} by {_keys(self.by)} per {_keys(self.keys)}"


@dataclass(frozen=True, eq=False)
class ProcessSpec(Spec):
    """A keyed Python process function with state and timers."""

    KIND: ClassVar[str] = "process"
    keys: tuple[str, ...]
    time: str | None
    process_fn: Callable[..., Any]
    timer_fn: Callable[..., Any] | None
    time_type: TimeType | None
    ttl_of: Callable[[str], int]

    @property
    def uses_event_time(self) -> bool:
        return self.time is not None

    def describe(self) -> str:
        return f"by {_keys(self.keys)}"


@dataclass(frozen=True, eq=False)
class ReduceSpec(Spec):
    """A running Python reduce per key."""

    KIND: ClassVar[str] = "reduce"
    keys: tuple[str, ...]
    fn: Callable[..., Any]

    def describe(self) -> str:
        return f"by {_keys(self.keys)}"


@dataclass(frozen=True, eq=False)
class DedupSpec(Spec):
    """Drop each key's repeats within an event-time interval."""

    KIND: ClassVar[str] = "dedup"
    keys: tuple[str, ...]
    time: str
    within_ms: int
    time_type: TimeType | None

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        return f"by {_keys(self.keys)} within={self.within_ms}ms"


@dataclass(frozen=True, eq=False)
class ChangesSpec(Spec):
    """Emit a key's record when a column differs from its previous one."""

    KIND: ClassVar[str] = "changes"
    keys: tuple[str, ...]
    time: str
    columns: tuple[str, ...]
    time_type: TimeType | None

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{_keys(self.columns)} by {_keys(self.keys)}"


@dataclass(frozen=True, eq=False)
class JoinSpec(Spec):
    """A join of two keyed streams: interval (``between``), window (``window``) or temporal."""

    left_keys: tuple[str, ...]
    right_keys: tuple[str, ...]
    left_time: str
    right_time: str
    how: str
    suffix: str
    time_type: TimeType | None
    between: tuple[int, int] | None = None
    window: Tumbling | Sliding | None = None

    @property
    def kind(self) -> str:
        if self.between is not None:
            return "interval_join"
        return "window_join" if self.window is not None else "temporal_join"

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        on = f"on {_keys(self.left_keys)} = {_keys(self.right_keys)} how={self.how}"
        if self.between is not None:
            return f"{on} between={self.between[0]}ms..{self.between[1]}ms"
        if self.window is not None:
            return f"{on} window={self.window!r}"
        return on


@dataclass(frozen=True, eq=False)
class LookupJoinSpec(Spec):
    """A join with a static table."""

    KIND: ClassVar[str] = "lookup_join"
    table: pl.DataFrame
    keys: tuple[str, ...]
    how: str
    suffix: str

    def describe(self) -> str:
        return f"on {_keys(self.keys)} how={self.how} ({self.table.height} rows)"


@dataclass(frozen=True, eq=False)
class MatchSpec(Spec):
    """A CEP pattern per key (``key_by(...).match(pattern)``)."""

    KIND: ClassVar[str] = "match"
    keys: tuple[str, ...]
    time: str
    pattern: Pattern
    after_match: str
    time_type: TimeType | None
    measures: Mapping[str, pl.Expr]

    @property
    def uses_event_time(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{self.pattern!r} by {_keys(self.keys)} after_match={self.after_match}"
