"""Small frame operations without a query.

A Polars DataFrame method such as ``select``, ``filter`` or ``drop`` plans and runs a query:
70-250 µs on this project's 2-core CI machine whatever the frame's size. On a batch of a few
thousand rows that is most of the cost, and a window operator makes a dozen such calls per
batch. Building the frame from its Series instead (``Series.filter``, a list of Series) costs
5-20 µs. These helpers do that for the plain cases that the per-batch paths need.

Examples
--------
>>> frame = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
>>> pick(frame, ["b"]).columns, keep(frame, frame.get_column("a") > 1).rows()
(['b'], [(2, 'y'), (3, 'z')])
>>> stack([frame, frame.head(1)]).height
4
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

__all__ = ["keep", "pick", "stack"]

_BIG = 65_536  # rows beyond which a query's parallelism is worth its fixed cost
_CHUNKS = 16


def pick(frame: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """The columns ``names`` of ``frame``, in that order (``frame.select(names)``).

    >>> pick(pl.DataFrame({"a": [1], "b": [2]}), ["b", "a"]).columns
    ['b', 'a']
    """
    if list(names) == frame.columns:
        return frame
    if not names:
        return frame.select(names)  # an empty frame keeps no height otherwise
    return pl.DataFrame([frame.get_column(name) for name in names])


def keep(frame: pl.DataFrame, mask: pl.Series | np.ndarray) -> pl.DataFrame:
    """The rows of ``frame`` where ``mask`` (Boolean, no nulls) is true (``frame.filter(mask)``).

    >>> keep(pl.DataFrame({"a": [1, 2]}), np.array([False, True])).rows()
    [(2,)]
    """
    if isinstance(mask, np.ndarray):
        mask = pl.Series(mask, dtype=pl.Boolean)
    if not frame.width or frame.height > _BIG:
        return frame.filter(mask)  # (a big frame: the query filters its columns in parallel)
    return pl.DataFrame([column.filter(mask) for column in frame.iter_columns()])


def stack(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """``frames`` one under the other: without a query when they have one schema, else as
    ``pl.concat(how="vertical_relaxed")`` (types widened).

    >>> stack([pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [2.5]})]).rows()
    [(1.0,), (2.5,)]
    """
    first = frames[0]
    if len(frames) == 1:
        return first
    schema = first.schema
    if all(f.schema == schema for f in frames[1:]):
        out = first.clone()
        for f in frames[1:]:
            out.vstack(f, in_place=True)
        # Each stack adds chunks; state stacked batch after batch would end up in thousands.
        return out.rechunk() if out.n_chunks() > _CHUNKS else out
    return pl.concat(frames, how="vertical_relaxed")
