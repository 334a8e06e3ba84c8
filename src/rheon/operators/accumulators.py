"""Aggregations' partials held in NumPy arrays, one element per group.

A window operator whose key is one integer column (or none) holds its state as arrays: per open
pane, one element per key for each *field* (:class:`~rheon.operators.window.arrays.PaneArrays`).
A batch is then added with a few ``bincount`` passes and elementwise additions, where merging
frames of partial rows took a Polars group-by per batch (about 2 ms for a batch of 10,000
records over 1,000 keys).

An aggregation that can be held this way gives an :class:`Accumulator`
(:meth:`~rheon.operators.aggregations.Aggregation.accumulator`): a batch's fields per group,
how two groups' fields combine (added, or the smaller or larger kept), and how fields become the
aggregation's partial columns, with the names, types and values the Polars path gives, so that
results and checkpoints are the same whichever path ran.

Examples
--------
>>> frame = pl.DataFrame({"v": [0.1, 0.2, 0.3]})
>>> grid = Grid(np.array([0, 1, 0]), 2)
>>> acc = ExactSumAccumulator("v", "p")
>>> fields = acc.add(frame, grid)
>>> acc.settle(fields)  # carry the exact sums' limbs
>>> acc.partials(fields).get_column("p_n").to_list()
[2, 1]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
import polars as pl

from rheon.operators import exactsum
from rheon.operators.dense import Workspace

__all__ = [
    "Accumulator",
    "CountAccumulator",
    "ExactSumAccumulator",
    "ExtremeAccumulator",
    "Fields",
    "Grid",
    "IntSumAccumulator",
    "combine",
    "identity",
]

Fields = dict[str, np.ndarray]
"""An accumulator's arrays by field name, one element per group."""

Combine = np.ufunc  # np.add, np.minimum or np.maximum: how two groups' values of a field merge


def identity(combine: Combine, dtype: np.dtype) -> int | float:
    """The value a group with no rows holds for a field merged by ``combine``.

    >>> identity(np.add, np.dtype(np.int64)), identity(np.minimum, np.dtype(np.float64))
    (0, inf)
    """
    if combine is np.add:
        return 0
    if dtype.kind == "f":
        return math.inf if combine is np.minimum else -math.inf
    info = np.iinfo(dtype)
    return int(info.max) if combine is np.minimum else int(info.min)


def combine(into: Fields, other: Mapping[str, np.ndarray], how: Mapping[str, Combine]) -> None:
    """Merge ``other``'s fields into ``into`` (in place; a field ``into`` lacks is copied).

    >>> into = {"n": np.array([1, 2])}
    >>> combine(into, {"n": np.array([3, 0]), "m": np.array([5, 5])}, {"n": np.add, "m": np.minimum})
    >>> into["n"].tolist(), into["m"].tolist()
    ([4, 2], [5, 5])
    """
    for name, values in other.items():
        mine = into.get(name)
        if mine is None:
            into[name] = values.copy()
        else:
            how[name](mine, values, out=mine)


class Grid:
    """Each row's group (``index``, below ``size``) and the rows per group (``counts``).

    >>> Grid(np.array([2, 0, 2]), 3).counts.tolist()
    [1, 0, 2]
    """

    def __init__(self, index: np.ndarray, size: int, space: Workspace | None = None) -> None:
        self.index = index
        self.size = size
        self.space = space or Workspace()
        self.counts = np.bincount(index, minlength=size)

    def sums(self, weights: np.ndarray) -> np.ndarray:
        """Float sums of ``weights`` per group (exact while every partial sum is an integer below 2**53)."""
        return np.bincount(self.index, weights=weights, minlength=self.size)

    def present(self, series: pl.Series) -> np.ndarray:
        """Non-null values of ``series`` (one per row) per group, as Int64.

        >>> Grid(np.array([0, 0, 1]), 2).present(pl.Series([1, None, None])).tolist()
        [1, 0]
        """
        if not series.null_count():
            return self.counts
        return np.bincount(self.index[series.is_not_null().to_numpy()], minlength=self.size)


class Accumulator(ABC):
    """One aggregation's partials over groups, as NumPy fields (see the module's docstring).

    ``p`` is the prefix of the aggregation's partial columns; fields are named after it too.
    """

    def __init__(self, column: str | None, p: str) -> None:
        self.column = column
        self.p = p

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.p!r})"

    @abstractmethod
    def add(self, frame: pl.DataFrame, grid: Grid) -> Fields | None:
        """This batch's fields per group of ``grid`` (arrays of ``grid.size``, holding the
        :func:`identity` where a group has no rows); ``None`` when this batch cannot be held
        this way (then the window uses the Polars path)."""

    def combines(self, name: str) -> Combine:
        """How the field ``name`` of two groups merges (added, unless said otherwise)."""
        return np.add

    def settle(self, fields: Fields) -> None:
        """Bring fields to their normal form after merging (exact sums carry their limbs)."""
        return

    @abstractmethod
    def partials(self, fields: Mapping[str, np.ndarray]) -> pl.DataFrame:
        """The aggregation's partial columns, one row per element of the fields."""

    @abstractmethod
    def load(self, partials: pl.DataFrame) -> Fields | None:
        """The fields of partial rows (the inverse of :meth:`partials`), ``None`` if they
        cannot be held this way."""


class CountAccumulator(Accumulator):
    """``count()`` (rows) or ``count(column)`` (non-null values).

    >>> acc = CountAccumulator("v", "p")
    >>> added = acc.add(pl.DataFrame({"v": [1, None, 3]}), Grid(np.array([0, 1, 1]), 2))
    >>> acc.partials(added).rows()
    [(1,), (1,)]
    """

    def add(self, frame: pl.DataFrame, grid: Grid) -> Fields | None:
        counts = grid.counts if self.column is None else grid.present(frame.get_column(self.column))
        return {self.p: counts}

    def partials(self, fields: Mapping[str, np.ndarray]) -> pl.DataFrame:
        return pl.DataFrame([pl.Series(self.p, fields[self.p], dtype=pl.Int64)])

    def load(self, partials: pl.DataFrame) -> Fields | None:
        return {self.p: partials.get_column(self.p).to_numpy().astype(np.int64)}


class IntSumAccumulator(Accumulator):
    """``sum`` of an integer column whose sum is Int64 (Int8/16/64, UInt8/16): added as Int64,
    wrapping around as Polars' sum does; batches whose per-group sums may exceed 2**53 decline
    (they are counted in floats here).

    >>> acc = IntSumAccumulator("v", "p")
    >>> added = acc.add(pl.DataFrame({"v": [5, None, 7]}), Grid(np.array([0, 0, 1]), 2))
    >>> acc.partials(added).rows()
    [(5, 1), (7, 1)]
    """

    def add(self, frame: pl.DataFrame, grid: Grid) -> Fields | None:
        series = frame.get_column(self.column or "")
        present = grid.present(series)
        if series.null_count() == len(series):
            return {self.p + "_s": np.zeros(grid.size, np.int64), self.p + "_n": present}
        low, high = series.min(), series.max()
        largest = max(abs(int(low)), abs(int(high)))  # type: ignore[arg-type]
        if largest * int(grid.counts.max()) >= 2**53:
            return None
        weights = grid.space.array("weights", len(series), np.float64)
        np.copyto(weights, series.fill_null(0).to_numpy(), casting="unsafe")
        return {self.p + "_s": grid.sums(weights).astype(np.int64), self.p + "_n": present}

    def partials(self, fields: Mapping[str, np.ndarray]) -> pl.DataFrame:
        return pl.DataFrame(
            [
                pl.Series(self.p + "_s", fields[self.p + "_s"], dtype=pl.Int64),
                pl.Series(self.p + "_n", fields[self.p + "_n"], dtype=pl.Int64),
            ]
        )

    def load(self, partials: pl.DataFrame) -> Fields | None:
        sums = partials.get_column(self.p + "_s")
        if sums.null_count():
            return None
        return {
            self.p + "_s": sums.to_numpy().astype(np.int64),
            self.p + "_n": partials.get_column(self.p + "_n").to_numpy().astype(np.int64),
        }


class ExtremeAccumulator(Accumulator):
    """``min`` or ``max`` of numbers NumPy holds; batches with NaN or -0.0 decline (the Polars
    path treats them as :class:`~rheon.operators.aggregations.Min` says).

    >>> acc = ExtremeAccumulator("v", "p", pl.Int64(), smallest=True)
    >>> added = acc.add(pl.DataFrame({"v": [5, 2, None]}), Grid(np.array([0, 0, 1]), 2))
    >>> acc.partials(added).rows()
    [(2,), (None,)]
    """

    def __init__(self, column: str | None, p: str, dtype: pl.DataType, *, smallest: bool) -> None:
        super().__init__(column, p)
        self.dtype = dtype
        self.numpy_dtype = pl.Series([], dtype=dtype).to_numpy().dtype
        self.how: Combine = np.minimum if smallest else np.maximum

    def combines(self, name: str) -> Combine:
        return self.how if name == self.p else np.add

    def add(self, frame: pl.DataFrame, grid: Grid) -> Fields | None:
        series = frame.get_column(self.column or "")
        if series.dtype != self.dtype:
            return None
        if self.dtype.is_float() and (series.is_nan().any() or ((series == 0) & (1 / series < 0)).any()):
            return None
        present = grid.present(series)
        fill = identity(self.how, self.numpy_dtype)
        values = (series.fill_null(fill) if series.null_count() else series).to_numpy()
        if values.dtype != self.numpy_dtype:
            values = values.astype(self.numpy_dtype)
        out = np.full(grid.size, fill, dtype=self.numpy_dtype)
        self.how.at(out, grid.index, values)
        return {self.p: out, self.p + "_c": present}

    def partials(self, fields: Mapping[str, np.ndarray]) -> pl.DataFrame:
        values, present = fields[self.p], fields[self.p + "_c"]
        missing = present == 0
        data = np.ma.MaskedArray(values, mask=missing) if missing.any() else values
        return pl.DataFrame([pl.Series(self.p, data, dtype=self.dtype)])

    def load(self, partials: pl.DataFrame) -> Fields | None:
        series = partials.get_column(self.p)
        if series.dtype != self.dtype or (self.dtype.is_float() and series.is_nan().any()):
            return None
        values = series.fill_null(identity(self.how, self.numpy_dtype)).to_numpy().astype(self.numpy_dtype)
        return {self.p: values, self.p + "_c": series.is_not_null().to_numpy().astype(np.int64)}


_LIMB = 32  # exact sums are held as signed 32-bit limbs in Int64: l0 + l1*2**32 + l2*2**64 + l3*2**96
_LIMBS = 4
_MAX_GROUP_ROWS = 1 << 40  # rows of one group in one batch: pieces of at least 13 bits


def _place(limbs: list[np.ndarray], values: np.ndarray, offset: int) -> None:
    """Add ``values * 2**offset`` (Int64 values, ``|values| < 2**53``) to 32-bit ``limbs``,
    unsettled (see :meth:`ExactSumAccumulator.settle`).

    >>> limbs = [np.zeros(1, np.int64) for _ in range(4)]
    >>> _place(limbs, np.array([-3]), 40)  # -3 * 2**40 = (2**32 - 3 * 2**8) * 2**32 - 2**64
    >>> [int(limb[0]) for limb in limbs]
    [0, 4294966528, -1, 0]
    """
    at, shift = divmod(offset, _LIMB)
    if shift == 0 or at == _LIMBS - 1:
        limbs[at] += values << shift  # (the top limb: the whole sum is below 2**127)
        return
    low_bits = _LIMB - shift
    limbs[at] += (values & ((1 << low_bits) - 1)) << shift
    limbs[at + 1] += values >> low_bits  # floor: the two parts add up to values * 2**shift


class ExactSumAccumulator(Accumulator):
    """The exact float sum of :mod:`rheon.operators.exactsum` (``sum`` and ``mean`` of floats).

    A group keeps, per bin its values fall in, the exact sum of their integers on the bin's grid
    (four 32-bit limbs in Int64, carried after each merge) and how many were not zero, and its
    count of non-null values. :meth:`partials` rebuilds ``exactsum``'s columns from these: the
    same values the Polars path computes. Batches with an infinity, a NaN or values in the two
    lowest bins (below about 1e-272) decline.
    """

    def _bin_field(self, b: int, limb: int | str) -> str:
        return f"{self.p}_b{b}_{limb}"

    def add(self, frame: pl.DataFrame, grid: Grid) -> Fields | None:
        series = frame.get_column(self.column or "")
        n = grid.present(series)
        out: Fields = {self.p + "_n": n}
        if series.null_count() == len(series):
            return out
        bins = exactsum._batch_bins(frame, self.column or "")
        if bins is None or int(grid.counts.max()) >= _MAX_GROUP_ROWS:
            return None
        low, high, zeros, largest = bins
        # Pieces of `width` bits: a group's float sum of them stays an exact integer (below 2**53).
        width = 53 - int(grid.counts.max()).bit_length()
        space = grid.space
        x = series.cast(pl.Float64).to_numpy()
        if series.null_count():
            x = np.nan_to_num(x, nan=0.0)  # nulls (values are finite: _batch_bins checked)
        if low == high:
            bin_of = None
        else:
            bits = x.view(np.int64)
            exponent = np.maximum((bits >> 52) & 0x7FF, 1)
            bin_of = (exponent + exactsum.SHIFT) // exactsum.W
        rest = space.array("rest", len(x), np.float64)
        digit = space.array("digit", len(x), np.float64)
        for b in range(low, high + 1):
            factor = exactsum._FACTOR[b]
            np.multiply(x, factor, out=rest)  # exact: a power of two
            if bin_of is not None:
                rest[bin_of != b] = 0.0
                nonzero = ((bin_of == b) & (x != 0)).astype(np.float64)
            elif zeros:
                nonzero = (x != 0).astype(np.float64)
            else:
                nonzero = None
            bound = largest * factor if b == high else 2.0 ** (53 + exactsum.W)
            pieces = -(-math.frexp(bound)[1] // width)
            limbs = [np.zeros(grid.size, dtype=np.int64) for _ in range(_LIMBS)]
            for j in range(pieces - 1, -1, -1):
                if j:
                    np.trunc(np.multiply(rest, 2.0 ** (-j * width), out=digit), out=digit)
                    sums = grid.sums(digit).astype(np.int64)
                    np.subtract(rest, np.multiply(digit, 2.0 ** (j * width), out=digit), out=rest)  # exact
                else:
                    sums = grid.sums(rest).astype(np.int64)
                _place(limbs, sums, j * width)
            for j, limb in enumerate(limbs):  # every limb a field, for carries to land in
                out[self._bin_field(b, j)] = limb
            nz = n if nonzero is None else grid.sums(nonzero).astype(np.int64)
            out[self._bin_field(b, "nz")] = nz
        return out

    def _bins(self, fields: Mapping[str, np.ndarray]) -> list[int]:
        return sorted({int(name[len(self.p) + 2 :].split("_")[0]) for name in fields if name.startswith(self.p + "_b")})

    def settle(self, fields: Fields) -> None:
        for b in self._bins(fields):
            for j in range(_LIMBS - 1):
                limb = fields[self._bin_field(b, j)]
                carry = limb >> _LIMB  # floor: what is left is in [0, 2**32)
                if not carry.any():
                    continue
                limb -= carry << _LIMB
                fields[self._bin_field(b, j + 1)] += carry

    def partials(self, fields: Mapping[str, np.ndarray]) -> pl.DataFrame:
        # Series arithmetic, not a query: this runs each time windows fire, often on few rows.
        p = self.p
        n = fields[p + "_n"]
        rows = len(n)
        zero = pl.Series(np.zeros(rows, dtype=np.int64)).cast(pl.Int128)
        q, by_residue = zero, {1: zero, 2: zero}
        approx = np.zeros(rows, dtype=np.float64)
        low = np.full(rows, -1, dtype=np.int32)
        high = np.full(rows, -1, dtype=np.int32)
        shift = pl.Series([1 << (2 * _LIMB)], dtype=pl.Int128)
        for b in self._bins(fields):
            limbs = [fields[self._bin_field(b, j)] for j in range(_LIMBS)]  # settled: 0 <= limb < 2**32 but the top one
            below = (limbs[1].astype(np.uint64) << np.uint64(_LIMB)) | limbs[0].astype(np.uint64)
            above = (limbs[3] << _LIMB) | limbs[2]
            total = pl.Series(below, dtype=pl.UInt64).cast(pl.Int128) + pl.Series(above).cast(pl.Int128) * shift
            q = q + total
            if b % 3:
                by_residue[b % 3] = by_residue[b % 3] + total
            approx += total.cast(pl.Float64).to_numpy() * 2.0 ** exactsum._scale(b)
            nonzero = fields[self._bin_field(b, "nz")] > 0
            low[nonzero & (low < 0)] = b
            high[nonzero] = b
        none = low < 0
        return pl.DataFrame(
            [
                q.alias(p + "_q"),
                by_residue[1].alias(p + "_q1"),
                by_residue[2].alias(p + "_q2"),
                pl.Series(p + "_lo", np.ma.MaskedArray(low, mask=none) if none.any() else low, dtype=pl.Int32),
                pl.Series(p + "_hi", np.ma.MaskedArray(high, mask=none) if none.any() else high, dtype=pl.Int32),
                pl.Series(p + "_n", n, dtype=pl.Int64),
                pl.Series(p + "_x", approx, dtype=pl.Float64),
            ]
        )

    def load(self, partials: pl.DataFrame) -> Fields | None:
        """Rows whose non-zero values span at most three neighbouring bins, with finite float
        sums (the others have lost which bin each sum belongs to)."""
        p = self.p
        lo, hi = partials.get_column(p + "_lo"), partials.get_column(p + "_hi")
        fields: Fields = {p + "_n": partials.get_column(p + "_n").to_numpy().astype(np.int64)}
        if lo.null_count() == partials.height:
            return fields
        if not partials.get_column(p + "_x").is_finite().all() or (hi - lo).max() > 2:  # type: ignore[operator]
            return None
        low, high = int(lo.min()), int(hi.max())  # type: ignore[arg-type]
        if low < exactsum._FIRST_PLAIN:
            return None
        q, q1, q2 = (pl.col(p + s) for s in ("_q", "_q1", "_q2"))
        by_residue = {0: q - q1 - q2, 1: q1, 2: q2}
        exprs = []
        for b in range(low, high + 1):
            inside = (pl.col(p + "_lo") <= b) & (pl.col(p + "_hi") >= b)
            value = pl.when(inside).then(by_residue[b % 3]).otherwise(pl.lit(0, pl.Int128))
            for j in range(_LIMBS):
                limb = value // pl.lit(1 << (j * _LIMB), pl.Int128)
                if j < _LIMBS - 1:
                    limb = limb % pl.lit(1 << _LIMB, pl.Int128)
                exprs.append(limb.cast(pl.Int64).alias(self._bin_field(b, j)))
            # A row's bins between its lowest and highest may hold only zeros: counted as one
            # non-zero value, which only matters for the row's lowest and highest bin.
            exprs.append(
                pl.when(inside & ((pl.col(p + "_lo") == b) | (pl.col(p + "_hi") == b) | (value != 0)))
                .then(1)
                .otherwise(0)
                .cast(pl.Int64)
                .alias(self._bin_field(b, "nz"))
            )
        for column in partials.select(exprs).iter_columns():
            fields[column.name] = column.to_numpy().copy()
        return fields
