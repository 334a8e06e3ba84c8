"""The shape of dead-letter rows: what failed, where, and the original record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from rheon.core.batch import RAW_COL, user_columns

__all__ = ["DEAD_LETTER_SCHEMA", "dead_letter_frame", "payload_of", "payloads_of"]

DEAD_LETTER_SCHEMA = pl.Schema({"operator": pl.String(), "reason": pl.String(), "payload": pl.String()})


def payload_of(record: Any) -> str:
    """Serialize one record for a dead letter: JSON when possible, ``repr`` otherwise.

    Examples
    --------
    >>> payload_of({"x": 1})
    '{"x": 1}'
    >>> from datetime import datetime, timezone
    >>> payload_of({"at": datetime(2024, 1, 1, tzinfo=timezone.utc)})
    '{"at": "2024-01-01 00:00:00+00:00"}'
    """
    try:
        return json.dumps(record, default=str)
    except (TypeError, ValueError):
        return repr(record)


def payloads_of(frame: pl.DataFrame) -> list[str]:
    """Each row's payload: as received when the source kept it (``RAW_COL``), else the row as a
    JSON object (hidden columns removed).

    Examples
    --------
    >>> payloads_of(pl.DataFrame({"x": [1]}))
    ['{"x": 1}']
    >>> payloads_of(pl.DataFrame({"x": [1], RAW_COL: ['{"x":1,"ts":"soon"}']}))
    ['{"x":1,"ts":"soon"}']
    """
    if RAW_COL in frame.columns:
        return [str(v) for v in frame.get_column(RAW_COL).to_list()]
    return [payload_of(row) for row in user_columns(frame).iter_rows(named=True)]


def dead_letter_frame(
    operator: str | Sequence[str], reasons: str | Sequence[str], payloads: Sequence[str]
) -> pl.DataFrame:
    """Build dead-letter rows; one operator and reason for all rows, or one per row.

    Examples
    --------
    >>> dead_letter_frame("map 'm'", "boom", ['{"x": 1}']).row(0)
    ("map 'm'", 'boom', '{"x": 1}')
    """
    n = len(payloads)
    reason_list = [reasons] * n if isinstance(reasons, str) else list(reasons)
    operator_list = [operator] * n if isinstance(operator, str) else list(operator)
    return pl.DataFrame(
        {"operator": operator_list, "reason": reason_list, "payload": list(payloads)},
        schema=DEAD_LETTER_SCHEMA,
    )
