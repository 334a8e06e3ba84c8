"""Approximate aggregations: ``rh.approx_count_distinct`` (HyperLogLog) and ``rh.approx_quantile``
(DDSketch), kept per group as mergeable lists of ``{k, v}`` entries whose lists are reduced in
NumPy (:mod:`rheon.operators.sketches`)."""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.operators import sketches
from rheon.operators.aggregations import Aggregation, _numeric
from rheon.operators.dense import DenseGroups
from rheon.operators.exactsum import Post

__all__ = ["HLL_PRECISION", "ApproxCountDistinct", "ApproxQuantile"]


@dataclass(frozen=True, repr=False)
class _Sketch(Aggregation):
    """A mergeable sketch kept as a list of ``{k, v}`` entries per group: each row gives one
    entry (a bucket ``k`` and a value ``v``, or none when null); entries with the same bucket
    are reduced to one (the largest ``v``, or their sum) after a grouping that leaves a long
    list, and before a window's result is computed, so a list holds at most one entry per
    bucket or a few short of it, and merging two is concatenating and reducing. Reduced lists
    are in bucket order, which keeps later reductions cheap (:mod:`rheon.operators.sketches`)."""

    summed: ClassVar[bool] = False

    @abstractmethod
    def entry(self, x: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
        """The bucket (Int64) and value (Int64) of each value ``x`` (null buckets are skipped)."""

    def _entry_columns(self, p: str) -> list[pl.Expr]:
        """Each record's bucket (null for a null value) and value, as columns ``p_k`` and ``p_v``."""
        x = pl.col(self.column or "")
        k, v = self.entry(x)
        return [pl.when(x.is_not_null()).then(k).cast(pl.Int64).alias(p + "_k"), v.cast(pl.Int64).alias(p + "_v")]

    def _entries(self, p: str) -> pl.Expr:
        entry = pl.struct(pl.col(p + "_k").alias("k"), pl.col(p + "_v").alias("v"))
        return entry.filter(pl.col(p + "_k").is_not_null()).alias(p)

    SHORT: ClassVar[int] = 64
    """Lists up to this long may keep repeated buckets, out of order, until they grow or their
    window fires: reducing a batch of small groups costs more than carrying a few repeats."""

    def _reduce(self, p: str) -> Post:
        """The step that leaves one entry per bucket, in bucket order, in each row's list
        (unless every list is short); lists in order already stay as they are."""

        def reduce(frame: pl.DataFrame) -> pl.DataFrame:
            lists = frame.get_column(p)
            lens = lists.list.len().to_numpy()
            if not len(lens) or lens.max() <= self.SHORT:
                return frame
            lens, ks, vs = sketches.entries(lists)
            reduced_lens, reduced_ks, reduced_vs = sketches.reduced(lens, ks, vs, summed=self.summed)
            if reduced_ks is ks:
                return frame
            rows, wanted = sketches.rows_of(reduced_lens), np.arange(frame.height, dtype=np.int64)
            return frame.with_columns(sketches.lists_of(rows, reduced_ks, reduced_vs, wanted, p))

        return reduce

    def _results(self, merged: pl.DataFrame, p: str) -> np.ndarray:
        """Each row's result (:meth:`_values`), computed over all rows' lists as they are, then
        again for the lists that are not in bucket order once they are reduced (usually few:
        lists of raw records and merged lists that were short enough to be left as they were)."""
        lens, ks, vs = sketches.entries(merged.get_column(p))
        lists, fixed = sketches.repaired(lens, ks, vs, summed=self.summed)
        if len(lists) == len(lens):
            return self._values(*fixed)
        values = self._values(lens, ks, vs)
        if len(lists):
            values[lists] = self._values(*fixed)
        return values

    @abstractmethod
    def _values(self, lens: np.ndarray, ks: np.ndarray, vs: np.ndarray) -> np.ndarray:
        """Each list's result, from the lists' lengths and all entries' buckets and values (list
        after list, each in bucket order with one entry per bucket). Lists not in order may be
        given too: their results are replaced, but must not raise."""

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.col(p + "_value")

    @override
    def aggregate(self, frame: pl.DataFrame, p: str) -> tuple[pl.DataFrame, list[pl.Expr], Post | None]:
        return frame.with_columns(self._entry_columns(p)), [self._entries(p)], self._reduce(p)

    @override
    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        """The records' entries sorted and reduced per group in NumPy (one sort of a packed
        column, no hash grouping), each group's list in bucket order."""
        columns = frame.select(self._entry_columns(p))
        ks, vs = columns.get_column(p + "_k"), columns.get_column(p + "_v")
        index = groups.index
        if ks.null_count():
            present = ks.is_not_null()
            index, ks, vs = index[present.to_numpy()], ks.filter(present), vs.filter(present)
        rows, buckets, values = sketches.reduced_groups(index, ks.to_numpy(), vs.to_numpy(), summed=self.summed)
        return pl.DataFrame([sketches.lists_of(rows, buckets, values, groups.slots, p)]), None

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        return [self._entries(p)]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p).list.explode(keep_nulls=False, empty_as_null=False)]

    @override
    def merge(self, partials: pl.DataFrame, p: str) -> tuple[list[pl.Expr], Post | None]:
        return self.merges(p), self._reduce(p)


HLL_PRECISION = 14
"""HyperLogLog registers: 2**14, a relative standard error of 1.04 / sqrt(2**14) ≈ 0.81 %."""


@dataclass(frozen=True, repr=False)
class ApproxCountDistinct(_Sketch):
    """HyperLogLog: each value's 64-bit hash picks one of ``2**14`` registers (its top bits) and
    a rank (one more than the leading zeros of the rest); a register keeps its largest rank.
    The estimate is HyperLogLog's harmonic mean, with linear counting for small counts."""

    fn_name = "approx_count_distinct"

    @override
    def entry(self, x: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
        h = x.hash(seed=0x5EED)
        rest = 64 - HLL_PRECISION
        register = h // (1 << rest)
        rank = (h % (1 << rest)).bitwise_leading_zeros().cast(pl.Int64) - HLL_PRECISION + 1
        return register, rank

    @override
    def finish(self, merged: pl.DataFrame, p: str) -> pl.DataFrame:
        return merged.with_columns(pl.Series(p + "_value", self._results(merged, p), dtype=pl.Int64))

    @override
    def _values(self, lens: np.ndarray, ks: np.ndarray, vs: np.ndarray) -> np.ndarray:
        """The estimate of each window, from its registers, in NumPy: one pass over all
        windows' entries (each a power of two, summed in register order: the same bits however
        the entries were merged)."""
        m = float(1 << HLL_PRECISION)
        alpha = 0.7213 / (1 + 1.079 / m)
        harmonic = np.zeros(len(lens))
        filled = lens > 0
        if filled.any():
            starts = (np.cumsum(lens) - lens)[filled]
            harmonic[filled] = np.add.reduceat(np.ldexp(1.0, -vs), starts)
        empty = m - lens
        with np.errstate(divide="ignore", invalid="ignore"):  # (and lists not in order: garbage)
            raw = alpha * m * m / (harmonic + empty)
            linear = m * np.log(m / empty)
            estimate = np.where((raw <= 2.5 * m) & (empty > 0), linear, raw)
            values: np.ndarray = np.where(filled, np.rint(estimate), 0).astype(np.int64)
        return values

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return pl.Int64()


@dataclass(frozen=True, repr=False)
class ApproxQuantile(_Sketch):
    """DDSketch: each value falls in a logarithmic bucket ``ceil(log(|x|) / log(gamma))`` with
    ``gamma = (1 + e) / (1 - e)``, ``e`` the relative error; a bucket keeps its count. The
    quantile is the centre of the bucket holding the value of rank ``floor(q * (n - 1))``, within
    relative error ``e`` of that value. Infinities and NaN are left out, as nulls are."""

    q: float = 0.5
    relative_error: float = 0.01

    fn_name = "approx_quantile"
    default_input = pl.Float64()
    summed = True
    OFFSET: ClassVar[int] = 1 << 40  # |bucket| < 2**40 for every finite float at e >= 1e-9

    @property
    def gamma(self) -> float:
        return (1 + self.relative_error) / (1 - self.relative_error)

    @override
    def entry(self, x: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
        # one sortable code: negative values below zero below positive ones, by magnitude
        magnitude = x.cast(pl.Float64).abs()
        bucket = (magnitude.log() / math.log(self.gamma)).ceil().cast(pl.Int64) + self.OFFSET
        code = pl.when(magnitude == 0).then(0).when(x < 0).then(-bucket).otherwise(bucket)
        return pl.when(x.cast(pl.Float64).is_finite()).then(code), pl.lit(1)

    @override
    def finish(self, merged: pl.DataFrame, p: str) -> pl.DataFrame:
        values = pl.Series(p + "_value", self._results(merged, p), dtype=pl.Float64)
        return merged.with_columns(values.fill_nan(None))

    @override
    def _values(self, lens: np.ndarray, ks: np.ndarray, vs: np.ndarray) -> np.ndarray:
        """Each window's bucket of rank ``floor(q * (n - 1))``, found in NumPy over all windows'
        entries at once (cumulative counts, in bucket order within each window), then turned
        into a value with one power per distinct bucket in Python (a vectorized power may round
        differently in the last bit depending on the array's length)."""
        values = np.full(len(lens), np.nan)
        filled = lens > 0
        if filled.any():
            cum = np.zeros(len(vs) + 1, dtype=np.int64)
            np.cumsum(vs, out=cum[1:])
            ends = np.cumsum(lens)
            base, totals = cum[ends - lens], cum[ends] - cum[ends - lens]
            rank = np.floor(self.q * (totals - 1).astype(np.float64)).astype(np.int64)
            at = np.searchsorted(cum[1:], base + rank, side="right")
            chosen = ks[np.minimum(at, len(ks) - 1)][filled]
            gamma = self.gamma
            distinct, which = sketches.distinct(chosen)
            centres = [
                0.0 if c == 0 else math.copysign(2 * gamma ** (abs(c) - self.OFFSET) / (gamma + 1), c)
                for c in distinct.tolist()
            ]
            values[filled] = np.array(centres, dtype=np.float64)[which]
        return values

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return pl.Float64()

    @override
    def _check_type(self, where: str, field_name: str, dtype: pl.DataType) -> None:
        _numeric(self, where, field_name, dtype)

    @override
    def _args(self) -> list[str]:
        return [*super()._args(), repr(self.q), f"relative_error={self.relative_error!r}"]
