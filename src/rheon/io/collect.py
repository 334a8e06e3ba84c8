"""``rh.io.Collect``: an in-memory sink for tests and notebooks."""

from __future__ import annotations

import threading
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.columns import ColumnTypes
from rheon.core.errors import SinkError
from rheon.io.base import BuildContext, Sink, SinkLogic

__all__ = ["Collect"]


class Collect(Sink):
    """Keep every output row in memory, in emission order.

    ``rows`` is a list of dicts; ``to_polars()`` returns one DataFrame. Every row has every
    column seen in the output (``None`` where a row had none), so the result does not depend on
    how the rows were batched. Each run of the flow starts from empty. Reading ``rows`` while
    the flow runs (from another thread) is safe.

    Guarantee: exactly-once within one run (nothing is kept across processes).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("c")
    >>> out = rh.io.Collect()
    >>> flow.source(rh.io.Records([{"x": 1}, {"x": 2}])).filter(rh.col("x") > 1).sink(out)
    >>> flow.run()
    >>> out.rows, len(out)
    ([{'x': 2}], 1)
    >>> out.to_polars().shape
    (1, 1)
    """

    def __init__(self) -> None:
        self._frames: list[pl.DataFrame] = []
        self._rows: list[dict[str, Any]] = []
        self._rows_of = -1
        self._lock = threading.Lock()

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row received so far, as dicts, in emission order, each value as it was written
        (a field whose type differs between batches keeps each batch's values as they are)."""
        with self._lock:
            if self._rows_of != len(self._frames):
                frames = [f for f in self._frames if f.width]
                columns = list(dict.fromkeys(c for f in frames for c in f.columns))
                self._rows = [
                    row
                    for f in frames
                    for row in f.select(
                        pl.col(c) if c in f.columns else pl.lit(None).alias(c) for c in columns
                    ).to_dicts()
                ]
                self._rows_of = len(self._frames)
            return list(self._rows)

    def to_polars(self) -> pl.DataFrame:
        """Every row received so far as one DataFrame (columns unioned across batches).

        Raises `SinkError` if a column had different types in different batches (``rows`` has
        them as they were): one DataFrame cannot hold them without converting values.
        """
        with self._lock:
            frames = [f for f in self._frames if f.width]
        if not frames:
            return pl.DataFrame()
        types = ColumnTypes.over(frames, where="Collect")
        parts = []
        for frame in frames:
            part, bad, reasons = types.conform(frame)
            if bad is not None:
                msg = f"{reasons[0]}. A column had values of different types in different batches: read .rows instead"
                raise SinkError(msg)
            parts.append(part)
        return pl.concat(parts, how="diagonal")

    def clear(self) -> None:
        """Forget everything collected."""
        with self._lock:
            self._frames.clear()
            self._rows = []
            self._rows_of = -1

    def __len__(self) -> int:
        with self._lock:
            return sum(f.height for f in self._frames)

    def _append(self, frame: pl.DataFrame) -> None:
        with self._lock:
            self._frames.append(frame)

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        self.clear()
        return _CollectLogic(self)

    def __repr__(self) -> str:
        return f"Collect({len(self)} rows)"


class _CollectLogic(SinkLogic):
    def __init__(self, target: Collect) -> None:
        self.target = target

    @override
    def write(self, frame: pl.DataFrame) -> None:
        self.target._append(frame)
