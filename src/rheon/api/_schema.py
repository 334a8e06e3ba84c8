"""Build-time schema checks: run an expression on an empty frame to learn (or reject) it."""

from __future__ import annotations

import re
from collections.abc import Callable

import polars as pl

from rheon.core.errors import FlowError, columns_hint, did_you_mean

__all__ = ["infer"]


def _missing_column(message: str) -> str | None:
    match = re.search(r'"([^"]+)"', message.splitlines()[0])
    return match.group(1) if match else None


def infer(where: str, schema: pl.Schema | None, build: Callable[[pl.LazyFrame], pl.LazyFrame]) -> pl.Schema | None:
    """The schema ``build`` gives on a frame with ``schema``; ``None`` if the input is unknown.

    Examples
    --------
    >>> infer("filter 'f'", pl.Schema({"amount": pl.Int64}), lambda lf: lf.select(pl.col("amout")))
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: filter 'f': unknown column 'amout' (columns: amount). Did you mean 'amount'?
    """
    if schema is None:
        return None
    try:
        return build(pl.LazyFrame(schema=schema)).collect_schema()
    except pl.exceptions.ColumnNotFoundError as exc:
        name = _missing_column(str(exc)) or str(exc).splitlines()[0]
        msg = f"{where}: unknown column '{name}' {columns_hint(schema.names())}.{did_you_mean(name, schema.names())}"
        raise FlowError(msg) from None
    except pl.exceptions.PolarsError as exc:
        msg = f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        raise FlowError(msg) from None
