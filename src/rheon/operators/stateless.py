"""Vectorized stateless operators: filter by expression, with_columns, select."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL, Batch
from rheon.core.deadletters import dead_letter_frame, payloads_of
from rheon.core.errors import FlowError, columns_hint
from rheon.operators.base import DEAD, MAIN, Operator, Output

__all__ = ["ExprChain", "ExprFilter", "ExprOperator", "Select", "WithColumns"]


class ExprOperator(Operator):
    """An operator that applies Polars expressions to a whole batch.

    If Polars fails on a batch (a bad cast, say), the batch is retried row by row: the rows that
    fail go to the dead-letter output with Polars' message, the others go on.
    """

    @abstractmethod
    def query(self, frame: pl.LazyFrame, watermarks: bool) -> pl.LazyFrame:
        """This step on a lazy frame; ``watermarks``: whether it carries the hidden watermark
        column."""

    @abstractmethod
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Transform a frame (which may carry the hidden watermark column)."""

    @property
    def steps(self) -> list[ExprOperator]:
        """The steps this operator runs (itself, unless it is a chain)."""
        return [self]

    def missing_column(self, frame: pl.DataFrame, exc: pl.exceptions.ColumnNotFoundError) -> FlowError:
        """The error for a step that reads a column ``frame`` does not have."""
        cols = [c for c in frame.columns if c != WM_COL]
        first = str(exc).splitlines()[0]
        return FlowError(f"{self.label}: {first} {columns_hint(cols)}")

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        if frame.height == 0:
            try:
                return [(MAIN, batch.with_frame(self.apply(frame)))]
            except pl.exceptions.PolarsError:
                return [(MAIN, batch)]
        try:
            return [(MAIN, batch.with_frame(self.apply(frame)))]
        except pl.exceptions.ColumnNotFoundError as exc:
            raise self.missing_column(frame, exc) from exc
        except pl.exceptions.PolarsError:
            return self._row_by_row(batch)

    def _row_by_row(self, batch: Batch) -> list[Output]:
        """Each row through the steps one at a time: the rows a step fails on go to the dead
        letters, naming that step, with Polars' message."""
        good: list[pl.DataFrame] = []
        labels: list[str] = []
        reasons: list[str] = []
        bad_rows: list[pl.DataFrame] = []
        frame = batch.frame
        for i in range(frame.height):
            row = out = frame.slice(i, 1)
            for step in self.steps:
                try:
                    out = step.apply(out)
                except pl.exceptions.PolarsError as exc:
                    labels.append(step.label)
                    reasons.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                    bad_rows.append(row)
                    break
            else:
                good.append(out)
        out = pl.concat(good, how="diagonal_relaxed") if good else frame.clear()
        payloads = payloads_of(pl.concat(bad_rows)) if bad_rows else []
        letters = dead_letter_frame(labels, reasons, payloads)
        return [
            (MAIN, batch.with_frame(out)),
            (DEAD, Batch(letters, watermark=batch.watermark, ingest_ns=batch.ingest_ns)),
        ]


class ExprChain(ExprOperator):
    """Consecutive expression steps (filter, with_columns, select) run as one Polars query.

    Each step as its own eager call would plan a query and materialize its whole output for the
    next; as one lazy query Polars fuses them (a filter's rows are not copied before the next
    step computes on them) and plans once. Failures are still reported per step: a column that
    is missing names the step that reads it, and a batch Polars fails on is redone row by row,
    each failing row's dead letter naming its step.

    >>> chain = ExprChain([ExprFilter("big", pl.col("x") > 1), WithColumns("double", [pl.col("x") * 2])])
    >>> chain.apply(pl.DataFrame({"x": [1, 2, 3]}))["x"].to_list(), chain.label
    ([4, 6], "chain 'big+double'")
    """

    kind = "chain"

    def __init__(self, steps: Sequence[ExprOperator]) -> None:
        super().__init__("+".join(step.name for step in steps))
        self._steps = list(steps)

    @property
    @override
    def label(self) -> str:
        return f"chain '{self.name}'"

    @property
    @override
    def steps(self) -> list[ExprOperator]:
        return self._steps

    @override
    def query(self, frame: pl.LazyFrame, watermarks: bool) -> pl.LazyFrame:
        for step in self._steps:
            frame = step.query(frame, watermarks)
        return frame

    @override
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        # In memory: "auto" may pick the streaming engine, whose start-up costs more than a
        # small batch's whole query.
        return self.query(frame.lazy(), WM_COL in frame.columns).collect(engine="in-memory")

    @override
    def missing_column(self, frame: pl.DataFrame, exc: pl.exceptions.ColumnNotFoundError) -> FlowError:
        for step in self._steps:  # find the step that reads it
            try:
                frame = step.apply(frame)
            except pl.exceptions.ColumnNotFoundError as missing:
                return step.missing_column(frame, missing)
            except pl.exceptions.PolarsError:
                break
        return super().missing_column(frame, exc)


class ExprFilter(ExprOperator):
    """Keep rows where a boolean expression is true (null counts as false, as in SQL)."""

    kind = "filter"

    def __init__(self, name: str, predicate: pl.Expr) -> None:
        super().__init__(name)
        self.predicate = predicate

    @override
    def query(self, frame: pl.LazyFrame, watermarks: bool) -> pl.LazyFrame:
        return frame.filter(self.predicate)

    @override
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(self.predicate)


class WithColumns(ExprOperator):
    """Add or replace columns computed by expressions."""

    kind = "with_columns"

    def __init__(self, name: str, exprs: Sequence[pl.Expr]) -> None:
        super().__init__(name)
        self.exprs = list(exprs)

    @override
    def query(self, frame: pl.LazyFrame, watermarks: bool) -> pl.LazyFrame:
        return frame.with_columns(self.exprs)

    @override
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(self.exprs)


class Select(ExprOperator):
    """Keep (or compute) just the given columns; the hidden watermark column stays."""

    kind = "select"

    def __init__(self, name: str, exprs: Sequence[pl.Expr]) -> None:
        super().__init__(name)
        self.exprs = list(exprs)

    @override
    def query(self, frame: pl.LazyFrame, watermarks: bool) -> pl.LazyFrame:
        return frame.select([*self.exprs, pl.col(WM_COL)] if watermarks else self.exprs)

    @override
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select([*self.exprs, pl.col(WM_COL)] if WM_COL in frame.columns else self.exprs)
