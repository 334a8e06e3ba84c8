"""``key_by(...).changes(columns)``: a key's records whose value differs from the key's last one.

Each key's records are handled in event-time order (ties by arrival) once the watermark has
passed them. A record comes out when its ``columns`` differ from those of the key's previous
record; a key's first record always does. Values compare as Polars compares them with
``eq_missing``: a null equals a null, a NaN equals a NaN. The state per key is its last value.

Vectorized per release: each row is compared with the row before it (one Polars expression);
only each key's first row is compared with the state, one Python step per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.eventtime import TimeType
from rheon.operators.base import MAIN
from rheon.operators.ordered import ORDER, SEQ, TIME, TRIGGER, OrderedKeyed, Released
from rheon.state.backends import KeyedStateBackend

__all__ = ["Changes"]

_LAST = "changes_last"  # state: the key's last value, a tuple with one item per column


class Changes(OrderedKeyed):
    """Emits each key's records whose ``columns`` differ from the key's previous record."""

    kind = "changes"

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str,
        columns: Sequence[str],
        time_type: TimeType | None,
        backend: KeyedStateBackend | None = None,
    ) -> None:
        self.columns = list(columns)
        super().__init__(name, keys, time_col, time_type, backend)

    @override
    def _signature(self) -> dict[str, Any]:
        return {"columns": self.columns}

    @override
    def _handle(self, released: Released) -> dict[str, pl.DataFrame]:
        rows, heads, columns = released.rows, released.heads, self.columns
        # a column no record has had yet is null, as a missing field is
        value = [(pl.col(c) if c in rows.columns else pl.repeat(None, pl.len())).alias(c) for c in columns]
        same = rows.select(pl.all_horizontal([v.eq_missing(v.shift(1)) for v in value])).to_series()
        changed = ~same.to_numpy()
        cells = self._cells(released)
        before: list[tuple[Any, ...] | None] = [c.get(_LAST) for c in cells]
        known = [b for b, v in enumerate(before) if v is not None]
        changed[heads] = True
        if known:
            at = heads[known]
            firsts = rows[at].select(value)
            last = [v for v in before if v is not None]
            olds = pl.DataFrame(
                [
                    pl.Series(f"__old{i}", [v[i] for v in last], dtype=firsts.schema[c], strict=False)
                    for i, c in enumerate(columns)
                ]
            )
            equal = pl.concat([firsts, olds], how="horizontal").select(
                pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"__old{i}")) for i, c in enumerate(columns)])
            )
            changed[at] = ~equal.to_series().to_numpy()
        for cell, now in zip(cells, rows[released.ends].select(value).rows(), strict=True):
            cell[_LAST] = now
        out = rows.filter(pl.Series(changed)).with_columns(pl.col(TIME).alias(TRIGGER), pl.col(SEQ).alias(ORDER))
        return {MAIN: out}
