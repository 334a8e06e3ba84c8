"""Keys of per-record keyed operators (``process``, ``reduce``) as Python values.

Windows group keys with Polars, where all NaNs are one group. A Python dict does not: ``nan ==
nan`` is false and each NaN read from a frame is a new object, so a NaN key would never find its
state again (each record a fresh key). Keys read from float columns are therefore canonical: every
NaN becomes `NAN_KEY`, one NaN that equals itself, hashes alike everywhere and unpickles as
itself, so state and timers of a NaN key survive checkpoints too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import polars as pl

__all__ = ["NAN_KEY", "key_getter"]


class _NaNKey(float):
    """NaN as a key: equal to every NaN (so to itself), one hash, pickled by reference."""

    __slots__ = ()

    def __new__(cls) -> _NaNKey:
        return super().__new__(cls, "nan")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and math.isnan(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return 0x7FF8  # the bits of a quiet NaN's exponent: any constant would do

    def __reduce__(self) -> str:
        return "NAN_KEY"


NAN_KEY = _NaNKey()
"""The one NaN that keyed operators use as a key."""


def _canonical(value: Any) -> Any:
    return NAN_KEY if value != value else value  # only NaN differs from itself


def key_getter(keys: Sequence[str], schema: pl.Schema) -> Callable[[dict[str, Any]], Any]:
    """A function of a row giving its key (a value, or a tuple for several columns); NaNs of float
    key columns come out as `NAN_KEY`.

    Examples
    --------
    >>> key_of = key_getter(["x"], pl.Schema({"x": pl.Float64}))
    >>> states = {}
    >>> for row in [{"x": float("nan")}, {"x": float("nan")}, {"x": 1.0}]:
    ...     states[key_of(row)] = states.get(key_of(row), 0) + 1
    >>> states
    {nan: 2, 1.0: 1}
    """
    get = itemgetter(*keys)
    floats = [i for i, k in enumerate(keys) if (t := schema.get(k)) is not None and t.is_float()]
    if not floats:
        return get
    if len(keys) == 1:
        return lambda row: _canonical(get(row))

    def tuple_key(row: dict[str, Any]) -> tuple[Any, ...]:
        key = get(row)
        if all(key[i] == key[i] for i in floats):
            return key  # type: ignore[no-any-return]
        return tuple(_canonical(v) for v in key)

    return tuple_key
