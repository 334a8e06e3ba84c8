"""Vectorized stateless operators: filter by expression, with_columns, select."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL, Batch
from rheon.core.deadletters import payloads_of
from rheon.core.errors import FlowError, columns_hint
from rheon.operators.base import MAIN, Operator, Output

__all__ = ["ExprFilter", "ExprOperator", "Select", "WithColumns"]


class ExprOperator(Operator):
    """An operator that applies Polars expressions to a whole batch.

    If Polars fails on a batch (a bad cast, say), the batch is retried row by row: the rows that
    fail go to the dead-letter output with Polars' message, the others go on.
    """

    @abstractmethod
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Transform a frame (which may carry the hidden watermark column)."""

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
            cols = [c for c in frame.columns if c != WM_COL]
            first = str(exc).splitlines()[0]
            msg = f"{self.label}: {first} {columns_hint(cols)}"
            raise FlowError(msg) from exc
        except pl.exceptions.PolarsError:
            return self._row_by_row(batch)

    def _row_by_row(self, batch: Batch) -> list[Output]:
        good: list[pl.DataFrame] = []
        reasons: list[str] = []
        bad_rows: list[pl.DataFrame] = []
        frame = batch.frame
        for i in range(frame.height):
            row = frame.slice(i, 1)
            try:
                good.append(self.apply(row))
            except pl.exceptions.PolarsError as exc:
                reasons.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                bad_rows.append(row)
        out = pl.concat(good, how="diagonal_relaxed") if good else frame.clear()
        payloads = payloads_of(pl.concat(bad_rows)) if bad_rows else []
        return [(MAIN, batch.with_frame(out)), self.dead(reasons, payloads, batch)]


class ExprFilter(ExprOperator):
    """Keep rows where a boolean expression is true (null counts as false, as in SQL)."""

    kind = "filter"

    def __init__(self, name: str, predicate: pl.Expr) -> None:
        super().__init__(name)
        self.predicate = predicate

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
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(self.exprs)


class Select(ExprOperator):
    """Keep (or compute) just the given columns; the hidden watermark column stays."""

    kind = "select"

    def __init__(self, name: str, exprs: Sequence[pl.Expr]) -> None:
        super().__init__(name)
        self.exprs = list(exprs)

    @override
    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        if WM_COL in frame.columns:
            return frame.select([*self.exprs, pl.col(WM_COL)])
        return frame.select(self.exprs)
