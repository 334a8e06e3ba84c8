"""Grouping by counting: when a batch's groups are a small dense range of integers.

A window operator groups each batch of records by ``(key..., pane)``. With integer keys, the
groups of a batch usually form a dense grid: a thousand keys times a hundred panes, for a
million records. Then each record's group is a slot number, ``Σ (column - min) // step *
stride``, and counting and adding per group is :func:`numpy.bincount`: one pass over the
records with no hashing, ~1 ms per million records where Polars' hash group-by takes ~25 ms.

Aggregations that can use this provide :meth:`rheon.operators.aggregations.Aggregation.dense`;
the others make the operator use the Polars group-by for that batch.

Examples
--------
>>> frame = pl.DataFrame({"pane": [2000, 1000, 2000, 2000], "key": [7, 3, 3, 7]})
>>> groups = DenseGroups.of(frame, ["key", "pane"], steps={"pane": 1000})
>>> groups.columns().with_columns(n=groups.counts).sort("key", "pane").rows()
[(3, 1000, 1), (3, 2000, 1), (7, 2000, 2)]
>>> groups.sums(np.array([1.0, 2.0, 3.0, 4.0])).tolist()  # per group, in the order of columns()
[2.0, 3.0, 5.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.ma  # Polars imports it on the first Series built from NumPy: ~25 ms of a flow's first batch
import polars as pl

__all__ = ["DenseGroups", "Workspace", "argsort", "integer_bounds", "numpy_integer", "strides_of"]


def numpy_integer(dtype: pl.DataType) -> bool:
    """Whether ``dtype`` is an integer type NumPy has (not the 128-bit ones).

    >>> numpy_integer(pl.UInt8()), numpy_integer(pl.Int128()), numpy_integer(pl.Float64())
    (True, False, False)
    """
    return dtype.is_integer() and dtype not in (pl.Int128, pl.UInt128)


def integer_bounds(frame: pl.DataFrame, columns: Sequence[str]) -> list[tuple[int, int]] | None:
    """The smallest and largest value of each of ``columns`` (integers), or ``None`` if one has
    nulls. Series methods, not a select: no query to plan, which matters on small frames.

    >>> integer_bounds(pl.DataFrame({"a": [3, 1], "b": [7, 9]}), ["a", "b"])
    [(1, 3), (7, 9)]
    """
    bounds = []
    for c in columns:
        series = frame.get_column(c)
        low, high = series.min(), series.max()
        if series.null_count() or not isinstance(low, int) or not isinstance(high, int):
            return None
        bounds.append((low, high))
    return bounds


def strides_of(ranges: Sequence[int]) -> list[int]:
    """Strides of a row-major grid with these ranges (the last column varies fastest).

    >>> strides_of([3, 4, 5])
    [20, 5, 1]
    """
    strides = [1] * len(ranges)
    for i in range(len(ranges) - 2, -1, -1):
        strides[i] = strides[i + 1] * ranges[i + 1]
    return strides


class Workspace:
    """Scratch arrays kept from batch to batch.

    A fresh NumPy array of a million floats costs more to fault into memory (~2 ms) than to
    compute (~0.3 ms), so the per-record arrays of a dense grouping are views into buffers that
    live as long as the operator (a few arrays of its largest batch).

    >>> space = Workspace()
    >>> a = space.array("x", 3, np.float64); a[:] = 1.0
    >>> space.array("x", 2, np.float64).base is a.base
    True
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, length: int, dtype: type[np.generic]) -> np.ndarray:
        """A buffer of ``length`` elements (contents undefined), valid until the next call for ``name``."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < length or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(max(length, 1024), dtype=dtype)
        return buffer[:length]


_MAX_SLOTS_PER_ROW = 4  # a grid more than 4x the records is sparse: the hash group-by is cheaper
_MIN_SLOTS = 1 << 16  # ...unless it is small anyway


class DenseGroups:
    """The groups of one frame's rows as slots of a dense grid.

    ``index`` holds each row's slot; ``counts`` the rows per group and :meth:`sums` the sums per
    group, for the groups that have rows, in slot order (which is the lexicographic order of
    the group columns).

    >>> groups = DenseGroups.of(pl.DataFrame({"k": [5, 7, 5]}), ["k"])
    >>> groups.index.tolist(), groups.size, groups.slots.tolist(), groups.counts.tolist()
    ([0, 2, 0], 3, [0, 2], [2, 1])
    """

    def __init__(
        self,
        index: np.ndarray,
        size: int,
        columns: Sequence[str],
        dtypes: Sequence[pl.DataType],
        lows: Sequence[int],
        steps: Sequence[int],
        strides: Sequence[int],
        ranges: Sequence[int],
        space: Workspace,
    ) -> None:
        self.index = index
        self.space = space
        self.size = size
        self._columns, self._dtypes = list(columns), list(dtypes)
        self._lows, self._steps, self._strides, self._ranges = list(lows), list(steps), list(strides), list(ranges)
        all_counts = np.bincount(index, minlength=size)
        self.slots = np.flatnonzero(all_counts)
        self.counts = all_counts[self.slots]
        self.grid: np.ndarray | None = None
        """For a sparse grid (:meth:`of`): each group's slot on the grid; ``index`` then holds
        group numbers ``0 .. size - 1``, which ``slots`` lists."""

    @classmethod
    def of(
        cls,
        frame: pl.DataFrame,
        columns: Sequence[str],
        steps: Mapping[str, int] | None = None,
        space: Workspace | None = None,
    ) -> DenseGroups | None:
        """The grouping of ``frame`` by ``columns`` by counting, or ``None`` when there is none:
        a column is not an integer or has nulls, or the grid does not fit in 62 bits.

        A grid much larger than the frame (many keys with few records each) is made dense by
        numbering its slots that have records, in slot order, with one sort:

        >>> sparse = DenseGroups.of(pl.DataFrame({"k": [10**9, 5, 10**9]}), ["k"])
        >>> sparse.index.tolist(), sparse.slots.tolist(), sparse.counts.tolist()
        ([1, 0, 1], [0, 1], [1, 2])
        >>> sparse.columns().get_column("k").to_list()
        [5, 1000000000]

        ``steps`` gives columns whose values all lie on a grid (window panes: multiples of the
        pane size, plus an offset) and its spacing; ``space`` the scratch arrays to use (the
        grouping's arrays are valid until it is next used).
        """
        space = space or Workspace()
        steps = steps or {}
        schema = frame.schema
        dtypes = [schema[c] for c in columns]
        if not columns or frame.height == 0 or not all(numpy_integer(d) for d in dtypes):
            return None
        bounds = integer_bounds(frame, columns)
        if bounds is None or any(lo < -(2**63) or hi >= 2**63 for lo, hi in bounds):  # nulls, or beyond Int64
            return None
        lows, highs = [lo for lo, _ in bounds], [hi for _, hi in bounds]
        spacing = [steps.get(c, 1) for c in columns]
        ranges = [(hi - lo) // step + 1 for lo, hi, step in zip(lows, highs, spacing, strict=True)]
        strides = strides_of(ranges)
        size = strides[0] * ranges[0]
        sparse = size > max(_MAX_SLOTS_PER_ROW * frame.height, _MIN_SLOTS)
        if sparse and size >= 2**62:
            return None
        index = space.array("index", frame.height, np.int64)
        term = space.array("term", frame.height, np.int64)
        for i, (c, lo, step, stride) in enumerate(zip(columns, lows, spacing, strides, strict=True)):
            target = index if i == 0 else term
            np.subtract(frame.get_column(c).to_numpy(), lo, out=target, dtype=np.int64, casting="unsafe")
            if step != 1:
                np.floor_divide(target, step, out=target)
            if stride != 1:
                np.multiply(target, stride, out=target)
            if i:
                np.add(index, term, out=index)
        if not sparse:
            return cls(index, size, columns, dtypes, lows, spacing, strides, ranges, space)
        # Sparse (many keys, few records each): number the slots that have records by sorting
        # them, and count over those numbers. One sort, where a hash group-by of Int128 sums
        # took about five times as long.
        order, ordered = argsort(index)
        first = np.empty(len(ordered), dtype=bool)
        first[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        grid = ordered[first]
        index[order] = np.cumsum(first) - 1
        groups = cls(index, len(grid), columns, dtypes, lows, spacing, strides, ranges, space)
        groups.grid = grid
        return groups

    def sums(self, weights: np.ndarray) -> np.ndarray:
        """Float sums of ``weights`` per group (exact when every partial sum is an integer
        below 2**53, as :mod:`rheon.operators.exactsum` arranges)."""
        return np.bincount(self.index, weights=weights, minlength=self.size)[self.slots]

    def present(self, series: pl.Series) -> np.ndarray:
        """The number of non-null values of ``series`` (the frame's rows) per group.

        >>> groups = DenseGroups.of(pl.DataFrame({"k": [0, 1, 0]}), ["k"])
        >>> groups.present(pl.Series([1, None, None])).tolist()
        [1, 0]
        """
        if not series.null_count():
            return self.counts
        return self.sums(series.is_not_null().to_numpy().astype(np.float64)).astype(np.int64)

    def extremes(self, values: np.ndarray, *, smallest: bool) -> np.ndarray:
        """The smallest (or largest) of ``values`` per group; ``values`` of a NumPy integer or
        float type without NaN.

        >>> groups = DenseGroups.of(pl.DataFrame({"k": [0, 1, 0]}), ["k"])
        >>> groups.extremes(np.array([5, 7, 3]), smallest=True).tolist()
        [3, 7]
        """
        if values.dtype.kind == "f":
            fill = np.inf if smallest else -np.inf
        else:
            info = np.iinfo(values.dtype)
            fill = info.max if smallest else info.min
        out = np.full(self.size, fill, dtype=values.dtype)
        (np.minimum if smallest else np.maximum).at(out, self.index, values)
        return out[self.slots]

    def columns(self) -> pl.DataFrame:
        """The group columns (names and types as in the frame), one row per group."""
        slots = self.slots if self.grid is None else self.grid
        return pl.DataFrame(
            [
                pl.Series(c, (slots // stride) % width * step + lo).cast(dtype)
                for c, dtype, lo, step, stride, width in zip(
                    self._columns, self._dtypes, self._lows, self._steps, self._strides, self._ranges, strict=True
                )
            ]
        )


def argsort(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts ``values`` (non-negative Int64, stably) and the sorted values.

    When the values and their positions fit in 63 bits together, both come from one sort of
    ``value << bits | position``: a plain sort is about twice as fast as an argsort.

    >>> order, ordered = argsort(np.array([30, 10, 20, 10]))
    >>> order.tolist(), ordered.tolist()
    ([1, 3, 2, 0], [10, 10, 20, 30])
    """
    bits = max(len(values) - 1, 1).bit_length()
    if len(values) == 0 or int(values.max()) >= 1 << (63 - bits):
        order = np.argsort(values, kind="stable")
        return order, values[order]
    packed = np.sort((values << bits) | np.arange(len(values), dtype=np.int64))
    return packed & ((1 << bits) - 1), packed >> bits
