"""Lookup join: enrich each record with the rows of a static table that share its key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL, Batch
from rheon.operators.base import MAIN, Operator, Output
from rheon.operators.join.common import right_names

__all__ = ["LookupJoin"]


class LookupJoin(Operator):
    """Join each batch with a table held in memory (a Polars join: vectorized).

    A record matching several table rows comes out once per row (as in SQL); in a left join a
    record matching none comes out once with nulls.
    """

    kind = "lookup_join"

    def __init__(
        self, name: str, table: pl.DataFrame, left_on: Sequence[str], right_on: Sequence[str], how: str, suffix: str
    ) -> None:
        super().__init__(name)
        self.left_on = list(left_on)
        self.right_on = list(right_on)
        self.how = how
        self.suffix = suffix
        self.table = table
        self.table_names: dict[str, str] | None = None
        self.renamed: pl.DataFrame | None = None

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        if frame.height == 0:
            return [(MAIN, batch)]
        if self.table_names is None or self.renamed is None:
            left = [c for c in frame.columns if c != WM_COL]
            self.table_names = right_names(left, self.table.columns, self.right_on, self.suffix)
            self.renamed = self.table.rename(self.table_names)
        joined = frame.join(
            self.renamed,
            left_on=self.left_on,
            right_on=self.right_on,
            how="left" if self.how == "left" else "inner",
            maintain_order="left",
            coalesce=True,
        )
        cols = [c for c in frame.columns if c != WM_COL] + list(self.table_names.values())
        if WM_COL in frame.columns:
            cols.append(WM_COL)
        return [(MAIN, batch.with_frame(joined.select(cols)))]

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "on": [self.left_on, self.right_on], "how": self.how}
