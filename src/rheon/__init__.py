"""rheon: embedded, vectorized stream processing for Python.

Build a :class:`Flow` from sources (``rh.io``), operators on :class:`Stream` objects and sinks,
then ``flow.run()``. Expressions are Polars expressions (``rh.col``, ``rh.lit``).

Examples
--------
>>> import rheon as rh
>>> flow = rh.Flow("quick")
>>> out = rh.io.Collect()
>>> flow.source(rh.io.Records([{"x": 1}, {"x": 5}])).filter(rh.col("x") > 2).sink(out)
>>> flow.run(); out.rows
[{'x': 5}]
"""

from importlib.metadata import PackageNotFoundError, version

from polars import col, lit

from rheon import io
from rheon.api.aggregations import (
    Aggregate,
    agg_fn,
    approx_count_distinct,
    approx_quantile,
    arg_max,
    arg_min,
    collect,
    count,
    count_distinct,
    first,
    last,
    max,
    mean,
    median,
    min,
    quantile,
    std,
    sum,
    var,
)
from rheon.api.flow import Flow
from rheon.api.stream import KeyedStream, MatchStream, Stream, WindowedStream
from rheon.core.errors import CheckpointError, FlowError, RecordError, RheonError, SinkError, SourceError
from rheon.core.logs import configure_logging
from rheon.runtime.stats import RunStats
from rheon.state.inspect import inspect
from rheon.time.windows import session, sliding, tumbling

try:
    __version__ = version("rheon")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "Aggregate",
    "CheckpointError",
    "Flow",
    "FlowError",
    "KeyedStream",
    "MatchStream",
    "RecordError",
    "RheonError",
    "RunStats",
    "SinkError",
    "SourceError",
    "Stream",
    "WindowedStream",
    "__version__",
    "agg_fn",
    "approx_count_distinct",
    "approx_quantile",
    "arg_max",
    "arg_min",
    "col",
    "collect",
    "configure_logging",
    "count",
    "count_distinct",
    "first",
    "inspect",
    "io",
    "last",
    "lit",
    "max",
    "mean",
    "median",
    "min",
    "quantile",
    "session",
    "sliding",
    "std",
    "sum",
    "tumbling",
    "var",
]
