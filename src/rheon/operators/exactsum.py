"""Exact, order-independent sums of floats, so that a window's ``sum`` and ``mean`` come out
bit for bit the same whatever the batch sizes, and after a crash and replay.

A float sum computed batch by batch depends on where the batches split:
``(a + b) + c`` and ``a + (b + c)`` may differ in the last bit. Here every value is instead
turned into an exact 128-bit integer on a fixed grid, and integers add exactly in any order.

A float64 ``x`` with biased exponent ``e`` falls in *bin* ``b = (e + SHIFT) // W``; inside its
bin it is the integer ``q = x * 2**-scale(b)`` (below ``2**(53 + W)``), with
``scale(b) = W*b - SHIFT - 1075``. A group keeps ``Σq`` over all its values, ``Σq`` over values
in bins ``≡ 1`` and ``≡ 2 (mod 3)``, and the lowest and highest bin of its non-zero values. When
those span at most three neighbouring bins (always when a window's non-zero magnitudes are
within a factor of ``2**88``, about 3e26, of each other), the three integer sums are the exact
sums per bin and the result is one fixed function of them (see :func:`final`). Wider windows,
and windows with an infinity or NaN, get the ordinary float sum instead (for wider windows, its
last bits may then depend on the batching).

Values are placed on the grid with a float multiplication by a power of two (exact) and a cast
to Int128: a few vectorized passes, no Python per value.

Examples
--------
>>> import polars as pl
>>> values = [0.1, 0.2, 0.3, 1e6, -1e6, 1e-7]
>>> frames = [pl.DataFrame({"v": values[i : i + n]}) for n in (1, 4) for i in range(0, 6, n)]
>>> def total(parts):
...     rows = [prepare(f, "v", "p").select(partials("v", "p")) for f in parts]  # general path
...     return pl.concat(rows).select(merges("p")).select(final("p")).item()
>>> total(frames[:6]) == total(frames[6:]) == total([pl.DataFrame({"v": values})])
True
>>> import math
>>> total([pl.DataFrame({"v": values})]) == math.fsum(values)  # here, correctly rounded
True
>>> sum(values)  # naive, order-dependent
0.6000000999767169
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np
import polars as pl

from rheon.operators.dense import DenseGroups

__all__ = ["dense", "final", "finish", "merge_plan", "merges", "partials", "plan", "prepare", "running_plan"]

W = 44  # bin width in binades: q < 2**(53 + W) leaves 2**(127 - 97) = 2**30 values of headroom
SHIFT = 15  # bin edges at 2**-26 and 2**18 (≈1.5e-8 and 262144): one bin for everyday values
BINS = (2046 + SHIFT) // W + 1


def _scale(b: int) -> int:
    return W * b - SHIFT - 1075


# x * FACTOR[b] is x's integer on bin b's grid. 2**-scale(b) overflows a float for the two
# lowest bins (|x| < 2**-906), which take a second factor: FACTOR2 (1 elsewhere).
_FACTOR = [2.0 ** min(-_scale(b), 1000) for b in range(BINS)]  # 2**-scale(b) if a float
_FACTOR2 = [2.0 ** (-_scale(b) - min(-_scale(b), 1000)) for b in range(BINS)]
_RESIDUE = [[f if b % 3 == r else 0.0 for b, f in enumerate(_FACTOR)] for r in (1, 2)]
_FIRST_PLAIN = _FACTOR2.index(1.0)  # the lowest bin that needs no second factor

_MANTISSA_BITS = 52
_EXP_MASK = 0x7FF


def _bins(x: pl.Expr) -> pl.Expr:
    bits = x.reinterpret(dtype=pl.Int64)
    exponent = ((bits // (1 << _MANTISSA_BITS)) & _EXP_MASK).clip(lower_bound=1)  # subnormals: e = 1
    return ((exponent + SHIFT) // W).cast(pl.Int32)


def _bin_of(value: float) -> int:
    bits: int = struct.unpack("<q", struct.pack("<d", value))[0]
    return (max((bits >> _MANTISSA_BITS) & _EXP_MASK, 1) + SHIFT) // W


Post = Callable[[pl.DataFrame], pl.DataFrame]


def _batch_bins(frame: pl.DataFrame, column: str) -> tuple[int, int, bool, float] | None:
    """The lowest and highest bin of the non-zero values of ``column`` in ``frame``, whether
    there are zeros, and the largest magnitude; ``None`` when a short path cannot be taken (no
    values, an infinity or NaN, or values in the lowest bins)."""
    # Series methods, not a select: no query to plan, which is most of the cost on small batches.
    x = frame.get_column(column).cast(pl.Float64)
    smallest, largest = x.min(), x.max()
    if not isinstance(smallest, float) or not isinstance(largest, float) or not math.isfinite(x.sum()):
        return None  # no values; or a NaN or an infinity, which make the sum not finite
    zeros = bool((x == 0).any())
    hi = max(abs(smallest), abs(largest))
    lo = (
        min(abs(smallest), abs(largest))
        if not zeros and (smallest > 0 or largest < 0)
        else x.filter(x != 0).abs().min()
    )
    if not isinstance(lo, float) or _bin_of(lo) < _FIRST_PLAIN:
        return None
    return _bin_of(lo), _bin_of(hi), zeros, hi


def _one_bin(p: str, low: int, zeros: bool) -> Post:
    """Completes groups of values from bin ``low`` alone, aggregated to ``p_q`` (their sum on
    the bin's grid), ``p_n`` and, if ``zeros``, ``p_nz`` (whether any is not zero)."""

    def bin_or_null(b: pl.Expr) -> pl.Expr:  # a group of only zeros has no bin
        return pl.when(pl.col(p + "_nz")).then(b) if zeros else b

    def one_bin(part: pl.DataFrame) -> pl.DataFrame:
        q = pl.col(p + "_q")
        return part.with_columns(
            *[(q if low % 3 == r else pl.lit(0, pl.Int128)).alias(f"{p}_q{r}") for r in (1, 2)],
            bin_or_null(pl.lit(low, pl.Int32)).alias(p + "_lo"),
            bin_or_null(pl.lit(low, pl.Int32)).alias(p + "_hi"),
            (q.cast(pl.Float64) * 2.0 ** _scale(low)).alias(p + "_x"),  # the float sum, for fallbacks
        )

    return one_bin


def plan(frame: pl.DataFrame, column: str, p: str) -> tuple[pl.DataFrame, list[pl.Expr], Post | None]:
    """How to aggregate ``column`` of raw records: ``frame`` with helper columns, the Polars
    aggregations to run per group, and a step completing the grouped result to :func:`partials`'
    columns (``None`` when the aggregations give them all).

    Batches whose non-zero values all lie in one bin, or two neighbouring ones, with no infinity
    or NaN (the common case) take a shorter path than the general one.
    """
    x = pl.col(column).cast(pl.Float64)
    bins = _batch_bins(frame, column)
    if bins is not None:
        low, high, zeros, _ = bins
        n = pl.col(column).count().cast(pl.Int64).alias(p + "_n")
        approx = x.sum().alias(p + "_x")
        nonzero = [(x != 0).any().alias(p + "_nz")] if zeros else []
        if low == high:
            frame = frame.with_columns((x * _FACTOR[low]).cast(pl.Int128).alias(p + "_q"))
            return frame, [pl.col(p + "_q").sum(), n, *nonzero], _one_bin(p, low, zeros)
        if high == low + 1:
            upper = x.abs() >= 2.0 ** (W * high - SHIFT - 1023)  # the smallest value of bin `high`
            factor = pl.when(upper).then(pl.lit(_FACTOR[high])).otherwise(pl.lit(_FACTOR[low]))
            frame = frame.with_columns((x * factor).cast(pl.Int128).alias(p + "_q"), upper.alias(p + "_u"))
            u, q = pl.col(p + "_u"), pl.col(p + "_q")
            zero = pl.lit(0, pl.Int128)
            in_residue = {high % 3: u, low % 3: ~u}
            exprs = [
                q.sum(),
                *[
                    (pl.when(in_residue[r]).then(q).otherwise(zero) if r in in_residue else zero)
                    .sum()
                    .alias(f"{p}_q{r}")
                    for r in (1, 2)
                ],
                u.any().alias(p + "_hu"),
                (~u & (x != 0) if zeros else ~u).any().alias(p + "_lu"),
                n,
                approx,
            ]

            def two_bins(part: pl.DataFrame) -> pl.DataFrame:
                lu, hu = pl.col(p + "_lu"), pl.col(p + "_hu")
                none = ~lu & ~hu  # only zeros
                return part.with_columns(
                    pl.when(none).then(None).when(lu).then(low).otherwise(high).cast(pl.Int32).alias(p + "_lo"),
                    pl.when(none).then(None).when(hu).then(high).otherwise(low).cast(pl.Int32).alias(p + "_hi"),
                ).drop(p + "_lu", p + "_hu")

            return frame, exprs, two_bins
    return prepare(frame, column, p), partials(column, p), None


def dense(frame: pl.DataFrame, column: str, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post] | None:
    """The partials of ``column`` per group of ``groups`` computed by counting (see
    :mod:`rheon.operators.dense`), for batches of one bin with no nulls; else ``None``.

    Each value's integer ``q`` on the bin's grid is split into signed pieces of ``P`` bits, with
    ``P`` small enough that the float sum of a group's pieces stays an integer below 2**53:
    exact. The pieces' sums are then put together in Int128.

    >>> frame = pl.DataFrame({"k": [0, 1, 0], "x": [0.1, 0.2, 0.3]})
    >>> columns, complete = dense(frame, "x", "p", DenseGroups.of(frame, ["k"]))
    >>> finish(complete(columns), "p").get_column("p_sum").to_list()
    [0.4, 0.2]
    """
    series = frame.get_column(column)
    bins = _batch_bins(frame, column) if series.null_count() == 0 else None
    if bins is None or bins[0] != bins[1]:
        return None
    low, _, zeros, largest = bins
    values = series.cast(pl.Float64).to_numpy()
    space = groups.space
    rest = np.multiply(values, _FACTOR[low], out=space.array("rest", len(values), np.float64))  # exact
    digit = space.array("digit", len(values), np.float64)
    width = 53 - int(groups.counts.max()).bit_length()  # n values below 2**width add up below 2**53
    pieces = -(-math.frexp(largest * _FACTOR[low])[1] // width)  # ceil(bits of the largest q / width)
    sums = []
    for j in range(pieces - 1, 0, -1):
        np.trunc(np.multiply(rest, 2.0 ** (-j * width), out=digit), out=digit)
        sums.append((j, groups.sums(digit)))
        # exact: what is left are the low bits of |rest|, with its sign
        np.subtract(rest, np.multiply(digit, 2.0 ** (j * width), out=digit), out=rest)
    sums.append((0, groups.sums(rest)))
    parts = pl.DataFrame([pl.Series(str(j), total.astype(np.int64)) for j, total in sums])
    q = pl.sum_horizontal(pl.col(str(j)).cast(pl.Int128) * pl.lit(1 << (j * width), pl.Int128) for j, _ in sums)
    columns = [parts.select(q.alias(p + "_q")).to_series(), pl.Series(p + "_n", groups.counts, dtype=pl.Int64)]
    if zeros:
        nonzero = np.not_equal(values, 0, out=space.array("nonzero", len(values), np.float64))
        columns.append(pl.Series(p + "_nz", groups.sums(nonzero) > 0))
    return pl.DataFrame(columns), _one_bin(p, low, zeros)


def prepare(frame: pl.DataFrame, column: str, p: str) -> pl.DataFrame:
    """Add the helper columns ``p_q``, ``p_q1``, ``p_q2`` (Int128) and ``p_b`` (bin) for ``column``."""
    x = pl.col(column).cast(pl.Float64)
    b = _bins(x)
    # (x * factor) * second: each step exact; the second factor is 1 but in the lowest bins.
    second = pl.lit(pl.Series(_FACTOR2, dtype=pl.Float64)).gather(b)
    factors = [_FACTOR, *_RESIDUE]
    qs = [x * pl.lit(pl.Series(f, dtype=pl.Float64)).gather(b) * second for f in factors]
    return frame.with_columns(
        *[q.cast(pl.Int128, strict=False).alias(p + name) for q, name in zip(qs, ("_q", "_q1", "_q2"), strict=True)],
        # Zeros, infinities and NaN do not count towards a group's lowest and highest bin.
        pl.when((x != 0) & x.is_finite()).then(b).alias(p + "_b"),
    )


def partials(column: str, p: str) -> list[pl.Expr]:
    """Aggregations over prepared rows: the exact sums, the bin range, the count and the ordinary
    float sum (which decides infinities and NaN, and very wide ranges)."""
    return [
        pl.col(p + "_q").sum().alias(p + "_q"),
        pl.col(p + "_q1").sum().alias(p + "_q1"),
        pl.col(p + "_q2").sum().alias(p + "_q2"),
        pl.col(p + "_b").min().alias(p + "_lo"),
        pl.col(p + "_b").max().alias(p + "_hi"),
        pl.col(column).count().cast(pl.Int64).alias(p + "_n"),
        pl.col(column).cast(pl.Float64).sum().alias(p + "_x"),
    ]


def merges(p: str) -> list[pl.Expr]:
    """Aggregations combining partial rows of one group (exact: integer sums, min, max)."""
    return [
        pl.col(p + "_q").sum(),
        pl.col(p + "_q1").sum(),
        pl.col(p + "_q2").sum(),
        pl.col(p + "_lo").min(),
        pl.col(p + "_hi").max(),
        pl.col(p + "_n").sum(),
        pl.col(p + "_x").sum(),
    ]


def merge_plan(frame: pl.DataFrame, p: str) -> tuple[list[pl.Expr], Post | None]:
    """Aggregations merging partial rows (and a completing step), like :func:`plan`: when every
    row's values lie in one and the same bin, only the total, the count and the float sum need
    adding up."""
    bin_ = _single_bin(frame, p)
    if bin_ is None:
        return merges(p), None
    x = pl.col(p + "_x")

    def one_bin(part: pl.DataFrame) -> pl.DataFrame:
        q = pl.col(p + "_q")
        return part.with_columns(
            *[(q if bin_ % 3 == r else pl.lit(0, pl.Int128)).alias(f"{p}_q{r}") for r in (1, 2)],
            pl.lit(bin_, pl.Int32).alias(p + "_lo"),
            pl.lit(bin_, pl.Int32).alias(p + "_hi"),
        )

    return [pl.col(p + "_q").sum(), pl.col(p + "_n").sum(), x.sum()], one_bin


def running_plan(frame: pl.DataFrame, p: str) -> tuple[list[str], Post] | None:
    """The partial columns that merge by addition alone, and a step completing the others from
    them, when every row's values lie in one and the same bin (as :func:`merge_plan`); ``None``
    otherwise. Runs of such rows can then be merged as differences of running sums (exact:
    Int128 integers and counts).

    >>> frame = prepare(pl.DataFrame({"k": [0, 0, 1], "v": [0.1, 0.2, 0.3]}), "v", "p")
    >>> running_plan(frame.group_by("k").agg(partials("v", "p")), "p")[0]
    ['p_q', 'p_n']
    """
    bin_ = _single_bin(frame, p)
    if bin_ is None:
        return None
    return [p + "_q", p + "_n"], _one_bin(p, bin_, zeros=False)


def _single_bin(frame: pl.DataFrame, p: str) -> int | None:
    """The one bin all partial rows' non-zero values lie in, if there is one and no row has
    only zeros, an infinity or a NaN."""
    his = frame.get_column(p + "_hi")
    low, high = frame.get_column(p + "_lo").min(), his.max()
    if not isinstance(low, int) or low != high or his.null_count() or not frame.get_column(p + "_x").is_finite().all():
        return None
    return low


def _power_of_two(exponent: pl.Expr) -> pl.Expr:
    """``2.0 ** exponent`` built from its bits, for exponents in [-1022, 1023]."""
    return ((exponent + 1023) * (1 << _MANTISSA_BITS)).cast(pl.Int64).reinterpret(dtype=pl.Float64)


def _times_power_of_two(value: pl.Expr, exponent: pl.Expr) -> pl.Expr:
    half = exponent // 2  # two factors: 2**exponent alone may not be a normal float
    return value * _power_of_two(half) * _power_of_two(exponent - half)


def finish(frame: pl.DataFrame, p: str) -> pl.DataFrame:
    """Merged partials with the sum added as column ``p_sum`` (see :func:`final`).

    Groups whose values all lie in one bin (the common case) need one rounding, not the three
    steps of :func:`final`; a frame of only such groups takes that shorter way.
    """
    xs = frame.get_column(p + "_x")
    # One bin, or no bin at all (only zeros or nulls: then the float sum is exact). NumPy, not
    # a query: this runs each time windows fire, often on a few rows.
    x = xs.to_numpy()
    his = frame.get_column(p + "_hi")
    hi = his.to_numpy()  # floats with NaN for nulls, if there are nulls
    no_bin = np.isnan(hi) if his.null_count() else None
    same = frame.get_column(p + "_lo").to_numpy() == hi
    if not xs.null_count() and np.isfinite(x).all() and (same | no_bin if no_bin is not None else same).all():
        exponent = (np.where(no_bin, 0, hi) if no_bin is not None else hi).astype(np.int64) * W - SHIFT - 1075
        q = frame.get_column(p + "_q").cast(pl.Float64).to_numpy()
        if len(exponent) and exponent.min() == exponent.max():  # one bin for every group: scalars
            exponent = exponent[:1]
        half = exponent // 2  # two factors, as _times_power_of_two: 2**exponent alone may not be a normal float
        total = q * np.ldexp(1.0, half) * np.ldexp(1.0, exponent - half)
        if no_bin is not None:  # only zeros: 0.0 (never -0.0, which would depend on where batches split)
            total = np.where(no_bin, x + 0.0, total)
        return frame.hstack([pl.Series(p + "_sum", total, dtype=pl.Float64)])
    return frame.with_columns(final(p).alias(p + "_sum"))


def final(p: str) -> pl.Expr:
    """The sum (Float64) from merged partials; null when there was no non-null value."""
    hi = pl.col(p + "_hi").cast(pl.Int64)
    q1, q2 = pl.col(p + "_q1"), pl.col(p + "_q2")
    by_residue = [pl.col(p + "_q") - q1 - q2, q1, q2]

    def residue(r: pl.Expr) -> pl.Expr:
        return pl.when(r == 0).then(by_residue[0]).when(r == 1).then(by_residue[1]).otherwise(by_residue[2])

    # Round the top bin's sum once, carry what rounding left over into the bin below (exact in
    # Int128), round that, carry again into the lowest bin, round, and add the three floats:
    # faithfully rounded (within one unit in the last place of the exact sum; most often the
    # correctly rounded sum itself), and always the same bits for the same sums.
    carried, terms = None, []
    for down in range(3):
        bin_ = hi - down
        value = residue(bin_ % 3) if carried is None else carried * pl.lit(1 << W, pl.Int128) + residue(bin_ % 3)
        rounded = value.cast(pl.Float64)
        terms.append(_times_power_of_two(rounded, bin_ * W - SHIFT - 1075))
        carried = value - rounded.cast(pl.Int128)
    exact = terms[0] + terms[1] + terms[2]
    approx = pl.col(p + "_x")
    return (
        pl.when(pl.col(p + "_n") == 0)
        .then(pl.lit(None, pl.Float64))
        # An infinity or NaN among the values makes the float sum so, and decides the result.
        .when(~approx.is_finite() | pl.col(p + "_hi").is_null() | (hi - pl.col(p + "_lo") > 2))
        .then(approx + 0.0)  # (a sum of zeros is 0.0, as math.fsum gives it)
        .otherwise(exact)
    )
