"""The entry lists of sketch aggregations (:class:`rheon.operators.approx.ApproxQuantile`,
:class:`~rheon.operators.approx.ApproxCountDistinct`), reduced in NumPy.

A sketch is a list of ``{k, v}`` entries per group: a bucket and a value. Reducing a list keeps
one entry per bucket, in bucket order: the largest value (HyperLogLog's rank) or the sum (a
DDSketch count). Here, the entries of many lists are handled at once as three flat arrays: each
entry's row (the list it belongs to), bucket and value.

Lists in order are cheap to keep so: a list already in order is only checked, and two
concatenated give two sorted runs, which a stable sort (NumPy's timsort) merges in one pass. A
window's result is computed over its lists as they are and then again for the few lists out of
order, once those are sorted (:func:`repaired`). Only the entries of raw records come in no
order; :func:`reduced_groups` sorts them as one packed Int64 column.

Examples
--------
>>> lens, ks, vs = np.array([3, 1]), np.array([9, 3, 9, 3]), np.array([1, 1, 1, 5])
>>> [a.tolist() for a in reduced(lens, ks, vs, summed=True)]
[[2, 1], [3, 9, 3], [1, 2, 5]]
>>> [a.tolist() for a in reduced(lens, ks, np.array([4, 2, 7, 5]), summed=False)]
[[2, 1], [3, 9, 3], [2, 7, 5]]
>>> lists_of(np.array([0, 0, 2]), np.array([3, 9, 4]), np.array([1, 2, 1]), np.arange(3), "p").to_list()
[[{'k': 3, 'v': 1}, {'k': 9, 'v': 2}], [], [{'k': 4, 'v': 1}]]
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = [
    "Entries",
    "disordered",
    "distinct",
    "entries",
    "lists_of",
    "reduced",
    "reduced_groups",
    "repaired",
    "rows_of",
]

Entries = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Entries as three Int64 arrays: each list's length (or each entry's row, or group), and
each entry's bucket and value."""

_LIMIT = 1 << 62  # packed keys stay clear of the sign bit


def entries(lists: pl.Series) -> Entries:
    """The entries of a column of lists: each list's length, and all entries' buckets and
    values, list after list.

    >>> lists = pl.Series([[{"k": 5, "v": 1}], [], [{"k": 2, "v": 3}, {"k": 1, "v": 1}]])
    >>> [a.tolist() for a in entries(lists)]
    [[1, 0, 2], [5, 2, 1], [1, 3, 1]]
    """
    lens = lists.list.len().fill_null(0).to_numpy().astype(np.int64, copy=False)
    flat = lists.explode(keep_nulls=False, empty_as_null=False)
    return lens, _int64(flat.struct.field("k")), _int64(flat.struct.field("v"))


def rows_of(lens: np.ndarray) -> np.ndarray:
    """Each entry's row (numbered from 0), from the rows' numbers of entries.

    >>> rows_of(np.array([1, 0, 2])).tolist()
    [0, 2, 2]
    """
    return np.repeat(np.arange(len(lens), dtype=np.int64), lens)


def _int64(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Int64).to_numpy().astype(np.int64, copy=False)


def _packing(columns: list[np.ndarray]) -> tuple[list[int], list[int]] | None:
    """Each column's minimum and shift for one packed Int64 key that sorts as the columns do
    (first column first), or ``None`` if their ranges do not fit in 62 bits together.

    >>> _packing([np.array([3, 5]), np.array([-1, 6])])
    ([3, -1], [3, 0])
    """
    lows = [int(c.min()) for c in columns]
    widths = [(int(c.max()) - low).bit_length() for c, low in zip(columns, lows, strict=True)]
    shifts = [sum(widths[i + 1 :]) for i in range(len(columns))]
    return (lows, shifts) if shifts[0] + widths[0] <= 62 else None


def _packed(columns: list[np.ndarray], lows: list[int], shifts: list[int]) -> np.ndarray:
    key: np.ndarray = np.subtract(columns[0], lows[0], dtype=np.int64)
    if shifts[0]:
        np.left_shift(key, shifts[0], out=key)
    term = np.empty_like(key)
    for column, low, shift in zip(columns[1:], lows[1:], shifts[1:], strict=True):
        np.subtract(column, low, out=term, dtype=np.int64)
        if shift:
            np.left_shift(term, shift, out=term)
        np.bitwise_or(key, term, out=key)
    return key


def _unpacked(key: np.ndarray, lows: list[int], shifts: list[int]) -> list[np.ndarray]:
    columns = []
    for i, (low, shift) in enumerate(zip(lows, shifts, strict=True)):
        if i == 0:
            part = key >> shift
        elif shift:
            part = key >> shift
            np.bitwise_and(part, (1 << (shifts[i - 1] - shift)) - 1, out=part)
        else:
            part = np.bitwise_and(key, (1 << shifts[i - 1]) - 1)
        if low:
            np.add(part, low, out=part)
        columns.append(part)
    return columns


def _starts(*columns: np.ndarray) -> np.ndarray:
    """Where runs of equal rows of ``columns`` (sorted) start."""
    first = np.empty(len(columns[0]), dtype=bool)
    first[0] = True
    np.not_equal(columns[0][1:], columns[0][:-1], out=first[1:])
    for column in columns[1:]:
        first[1:] |= column[1:] != column[:-1]
    return np.flatnonzero(first)


def _run_values(vs: np.ndarray, starts: np.ndarray, *, summed: bool) -> np.ndarray:
    """The value of each run of one bucket (starting at ``starts``): the sum, or the largest,
    which is the last (runs sorted by value too)."""
    if summed:
        return np.add.reduceat(vs, starts)
    return vs[np.append(starts[1:], len(vs)) - 1]  # type: ignore[no-any-return]


def disordered(lens: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The lists (their numbers, ascending) whose buckets are not strictly increasing: out of
    order, or a bucket repeated.

    >>> disordered(np.array([2, 0, 3, 1]), np.array([1, 5, 2, 2, 7, 0])).tolist()
    [2]
    """
    if len(ks) < 2:
        return np.zeros(0, dtype=np.int64)
    disorder = ks[1:] <= ks[:-1]
    ends = np.cumsum(lens)
    disorder[ends[(ends > 0) & (ends < len(ks))] - 1] = False  # from one list to the next
    if not disorder.any():
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.searchsorted(ends, np.flatnonzero(disorder) + 1, side="right"))


def _positions(lens: np.ndarray, ends: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Where the entries of ``lists`` are, given all lists' lengths and ends."""
    sub_lens = lens[lists]
    skipped = ends[lists] - sub_lens - (np.cumsum(sub_lens) - sub_lens)
    return np.repeat(skipped, sub_lens) + np.arange(int(sub_lens.sum()))


def _sorted_runs(lens: np.ndarray, ks: np.ndarray, vs: np.ndarray, *, summed: bool) -> Entries:
    """Each list's entries sorted (a stable sort: sorted runs merge in linear time) and reduced."""
    rows = rows_of(lens)
    columns = [rows, ks] if summed else [rows, ks, vs]
    packing = _packing(columns)
    order = np.lexsort(columns[::-1]) if packing is None else np.argsort(_packed(columns, *packing), kind="stable")
    rows, ks, vs = rows[order], ks[order], vs[order]
    starts = _starts(rows, ks)
    return np.bincount(rows[starts], minlength=len(lens)), ks[starts], _run_values(vs, starts, summed=summed)


def repaired(lens: np.ndarray, ks: np.ndarray, vs: np.ndarray, *, summed: bool) -> tuple[np.ndarray, Entries]:
    """The lists not in bucket order (see :func:`disordered`), and their entries reduced
    (lists in order are left as they are: these are usually few).

    >>> lists, fixed = repaired(np.array([1, 3]), np.array([4, 9, 3, 9]), np.array([1, 1, 1, 1]), summed=True)
    >>> lists.tolist(), [a.tolist() for a in fixed]
    ([1], [[2], [3, 9], [1, 2]])
    """
    lists = disordered(lens, ks)
    if not len(lists):
        return lists, (np.zeros(0, dtype=np.int64), ks[:0], vs[:0])
    at = _positions(lens, np.cumsum(lens), lists)
    return lists, _sorted_runs(lens[lists], ks[at], vs[at], summed=summed)


def reduced(lens: np.ndarray, ks: np.ndarray, vs: np.ndarray, *, summed: bool) -> Entries:
    """Entries of lists (as :func:`entries` gives them) reduced to one entry per bucket in
    each list, in bucket order. Lists in order already cost a check; the others are sorted
    and reduced (:func:`repaired`), and spliced back in."""
    lists, (fixed_lens, fixed_ks, fixed_vs) = repaired(lens, ks, vs, summed=summed)
    if not len(lists):
        return lens, ks, vs
    keep = np.ones(len(ks), dtype=bool)
    keep[_positions(lens, np.cumsum(lens), lists)] = False
    new_lens = lens.copy()
    new_lens[lists] = fixed_lens
    at = _positions(new_lens, np.cumsum(new_lens), lists)
    placed = np.zeros(int(new_lens.sum()), dtype=bool)
    placed[at] = True
    out_ks, out_vs = np.empty(len(placed), dtype=ks.dtype), np.empty(len(placed), dtype=vs.dtype)
    out_ks[at], out_vs[at] = fixed_ks, fixed_vs
    out_ks[~placed], out_vs[~placed] = ks[keep], vs[keep]
    return new_lens, out_ks, out_vs


def reduced_groups(groups: np.ndarray, ks: np.ndarray, vs: np.ndarray, *, summed: bool) -> Entries:
    """The entries of raw records (in any order), each of group ``groups``, reduced to one per
    bucket in each group: sorted by group, bucket and value (one packed column when the
    ranges fit in 62 bits, as for HyperLogLog's registers and ranks), then reduced by runs.

    >>> groups, ks, vs = np.array([7, 2, 7, 7]), np.array([4, 4, 1, 4]), np.array([3, 1, 1, 5])
    >>> [a.tolist() for a in reduced_groups(groups, ks, vs, summed=False)]
    [[2, 7, 7], [4, 1, 4], [1, 1, 5]]
    >>> [a.tolist() for a in reduced_groups(groups, ks, np.ones(4, dtype=np.int64), summed=True)]
    [[2, 7, 7], [4, 1, 4], [1, 1, 2]]
    """
    if not len(groups):
        return groups, ks, vs
    packing = _packing([groups, ks, vs])
    if packing is None:
        frame = pl.DataFrame({"g": groups, "k": ks, "v": vs}).sort(["g", "k", "v"])
        groups, ks, vs = (frame.get_column(c).to_numpy() for c in ("g", "k", "v"))
        starts = _starts(groups, ks)
        return groups[starts], ks[starts], _run_values(vs, starts, summed=summed)
    lows, shifts = packing
    key = pl.Series(_packed([groups, ks, vs], lows, shifts)).sort().to_numpy()
    starts = _starts(key >> shifts[1] if shifts[1] else key)  # runs of one (group, bucket)
    if len(starts) == len(key):  # no bucket repeats in a group
        groups, ks, vs = _unpacked(key, lows, shifts)
        return groups, ks, vs
    if not summed:  # sorted by value too: a run's last entry holds its largest
        groups, ks, vs = _unpacked(key[np.append(starts[1:], len(key)) - 1], lows, shifts)
        return groups, ks, vs
    groups, ks = _unpacked(key[starts], lows, shifts)[:2]
    if shifts[1]:
        return groups, ks, np.add.reduceat(_unpacked(key, lows, shifts)[2], starts)
    return groups, ks, np.diff(starts, append=len(key)) * lows[2]  # one value (raw counts of 1)


def lists_of(rows: np.ndarray, ks: np.ndarray, vs: np.ndarray, wanted: np.ndarray, name: str) -> pl.Series:
    """The lists of ``{k, v}`` entries of rows ``wanted`` (ascending), in that order; ``rows``
    in order (every entry's row in ``wanted``), an empty list for a row with no entry."""
    flat = pl.DataFrame([pl.Series("__row", rows, dtype=pl.Int64).set_sorted(), pl.Series("k", ks), pl.Series("v", vs)])
    per_row = flat.group_by("__row", maintain_order=True).agg(pl.struct("k", "v").alias(name))
    if per_row.height == len(wanted):  # every row has entries (the usual case)
        return per_row.get_column(name)
    every = pl.DataFrame([pl.Series("__row", wanted, dtype=pl.Int64)])
    lists = every.join(per_row, on="__row", how="left", maintain_order="left").get_column(name)
    return lists.fill_null(pl.lit([], dtype=lists.dtype))


def distinct(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``codes`` (integers) in order, and where each code is among
    them, as :func:`numpy.unique` gives them; by a table, without sorting, when the codes span
    a small range (as one window's buckets do).

    >>> [a.tolist() for a in distinct(np.array([7, 3, 7, 5]))]
    [[3, 5, 7], [2, 0, 2, 1]]
    """
    if not len(codes):
        return codes, np.zeros(0, dtype=np.intp)
    low, high = int(codes.min()), int(codes.max())
    if high - low >= 4 * len(codes) + 1024:
        values, which = np.unique(codes, return_inverse=True)
        return values, which.reshape(-1)
    offsets = codes - low
    seen = np.zeros(high - low + 1, dtype=bool)
    seen[offsets] = True
    position = np.cumsum(seen) - 1
    return np.flatnonzero(seen) + low, position[offsets]
