"""A plain-Python, record-at-a-time reference of rheon's window semantics.

It is deliberately naive (every window keeps its raw records, the watermark is re-checked after
every record) so that it can be read against the documentation and trusted. Tests compare the
vectorized engine against it, at many batch sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
NEG_INF = -math.inf


def quantile(values: list[Any], q: float, interpolation: str) -> float | None:
    """Polars' quantile of ``values``, written out (``polars-core``'s definitions)."""
    v = sorted(values)
    n = len(v)
    if not n:
        return None
    idx = (n - 1) * q
    lo, hi = math.floor(idx), math.ceil(idx)
    if interpolation == "nearest":
        return float(v[math.floor(idx + 0.5)])  # Rust's round: halves away from zero
    if interpolation == "lower":
        return float(v[lo])
    if interpolation == "higher":
        return float(v[hi])
    if interpolation == "midpoint":
        return (v[lo] + v[hi]) / 2 if lo != hi else float(v[lo])
    if interpolation == "linear":
        return float(v[lo]) if lo == hi else v[lo] + (v[hi] - v[lo]) * (idx - lo)
    if interpolation == "equiprobable":
        return float(v[max(math.ceil(n * q) - 1, 0)])
    raise ValueError(interpolation)


def _agg(kind: str, column: str | None, records: list[Row], opts: dict[str, Any] | None = None) -> Any:
    opts = opts or {}
    if "where" in opts:
        field_name, wanted = opts["where"]
        records = [r for r in records if r.get(field_name) == wanted]
    if kind in ("first", "last", "collect", "arg_max", "arg_min"):
        ordered = sorted(records, key=lambda r: r["ts"])  # stable: ties stay in arrival order
        if kind in ("arg_max", "arg_min"):
            by = opts["by"]
            rows = [r for r in ordered if r.get(by) is not None]
            if not rows:
                return None
            pick = max if kind == "arg_max" else min  # the first of equal ones, as documented
            return pick(rows, key=lambda r: r[by]).get(column)  # type: ignore[arg-type]
        values = [r[column] for r in ordered if r.get(column) is not None]  # type: ignore[index]
        if kind == "collect":
            return values
        if not values:
            return None
        return values[0] if kind == "first" else values[-1]
    if kind == "count":
        if column is None:
            return len(records)
        return sum(1 for r in records if r.get(column) is not None)
    values = [r[column] for r in records if r.get(column) is not None]  # type: ignore[index]
    if kind == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if kind == "sum":
        # rheon adds floats exactly and rounds once, like math.fsum (integers stay integers)
        return math.fsum(values) if any(isinstance(v, float) for v in values) else sum(values)
    if kind == "min":
        return min(values)
    if kind == "max":
        return max(values)
    if kind == "mean":
        return math.fsum(values) / len(values)
    if kind in ("quantile", "median"):
        return quantile(
            values, opts.get("q", 0.5), opts.get("interpolation", "linear" if kind == "median" else "nearest")
        )
    if kind in ("var", "std"):
        ddof = opts.get("ddof", 1)
        if len(values) <= ddof:
            return None
        mean = math.fsum(values) / len(values)
        var = math.fsum((x - mean) ** 2 for x in values) / (len(values) - ddof)
        return var if kind == "var" else math.sqrt(var)
    raise ValueError(kind)


@dataclass
class _Win:
    key: tuple[Any, ...]
    start: int
    end: int
    records: list[Row] = field(default_factory=list)
    fired: bool = False


def reference(
    rows: Iterable[Row],
    *,
    keys: Sequence[str],
    time: str,
    window: tuple[str, int, int],
    aggs: dict[str, tuple[Any, ...]],
    max_delay: int,
    lateness: int = 0,
    watermark_time: str | None = None,
) -> tuple[list[Row], list[Row]]:
    """Window results and late records, in emission order.

    The watermark is the largest ``watermark_time`` (default: ``time``) seen so far minus
    ``max_delay``; records are windowed by ``time``.

    ``window`` is ``("tumbling", size, size)``, ``("sliding", size, every)`` or
    ``("session", gap, 0)``. ``aggs`` maps output name to ``(kind, column)`` or ``(kind, column,
    options)``, options being ``q``, ``interpolation``, ``ddof``, ``by`` and ``where=(field, value)``
    (rows whose field equals value).
    """
    kind, size, every = window
    max_ts: float = NEG_INF
    wm: float = NEG_INF
    wins: list[_Win] = []
    out: list[Row] = []
    late: list[Row] = []

    def result(w: _Win) -> Row:
        row: Row = dict(zip(keys, w.key, strict=True))
        row["window_start"] = w.start
        row["window_end"] = w.end
        for name, (agg_kind, column, *opts) in aggs.items():
            row[name] = _agg(agg_kind, column, w.records, *opts)
        return row

    def advance(new_wm: float) -> None:
        nonlocal wins
        due = sorted((w for w in wins if not w.fired and w.end <= new_wm), key=lambda w: (w.end, w.start, w.key))
        for w in due:
            out.append(result(w))
            w.fired = True
        wins = [w for w in wins if not (w.fired and w.end + lateness <= new_wm)]

    for r in rows:
        pre = wm
        t = r[time]
        key = tuple(r[k] for k in keys)
        if kind in ("tumbling", "sliding"):
            starts = []
            s = (t // every) * every
            while s + size > t:
                starts.append(s)
                s -= every
            alive = [s for s in starts if s + size + lateness > pre]
            if not alive:
                late.append(r)
            else:
                updates = []
                for s in sorted(alive):
                    w = next((w for w in wins if w.key == key and w.start == s), None)
                    if w is None:
                        w = _Win(key, s, s + size)
                        wins.append(w)
                    w.records.append(r)
                    if w.end <= pre:
                        w.fired = True
                        updates.append(w)
                for w in sorted(updates, key=lambda w: (w.end, w.start)):
                    out.append(result(w))
        else:
            gap = size
            touching = [w for w in wins if w.key == key and w.start < t + gap and t < w.end]
            if not touching and t + gap + lateness <= pre:
                late.append(r)
            else:
                merged = _Win(key, min([t, *(w.start for w in touching)]), max([t + gap, *(w.end for w in touching)]))
                for w in touching:
                    merged.records.extend(w.records)
                merged.records.append(r)
                wins = [w for w in wins if w not in touching]
                wins.append(merged)
                if merged.end <= pre:
                    merged.fired = True
                    out.append(result(merged))
        max_ts = max(max_ts, r[watermark_time] if watermark_time is not None else t)
        wm = max_ts - max_delay
        advance(wm)
    advance(math.inf)
    return out, late


def run_engine(
    rows: list[Row],
    *,
    keys: Sequence[str],
    window: tuple[str, int, int],
    aggs: dict[str, tuple[Any, ...]],
    max_delay: int,
    lateness: int = 0,
    batch_size: int = 1000,
    build: Callable[..., Any] | None = None,
) -> tuple[list[Row], list[Row]]:
    """Run the same windowing through rheon (int64 ms time column ``ts``)."""
    import rheon as rh

    kind, size, every = window
    if kind == "tumbling":
        assigner: Any = rh.tumbling(f"{size}ms")
    elif kind == "sliding":
        assigner = rh.sliding(f"{size}ms", every=f"{every}ms")
    else:
        assigner = rh.session(gap=f"{size}ms")
    fns = {
        "count": rh.count,
        "sum": rh.sum,
        "min": rh.min,
        "max": rh.max,
        "mean": rh.mean,
        "count_distinct": rh.count_distinct,
        "quantile": rh.quantile,
        "median": rh.median,
        "var": rh.var,
        "std": rh.std,
        "first": rh.first,
        "last": rh.last,
        "collect": rh.collect,
        "arg_max": rh.arg_max,
        "arg_min": rh.arg_min,
    }

    def build_agg(kind: str, column: str | None, opts: dict[str, Any] | None = None) -> Any:
        kw = dict(opts or {})
        if "where" in kw:
            field_name, wanted = kw["where"]
            kw["where"] = rh.col(field_name) == wanted
        if kind == "quantile":
            return rh.quantile(column, kw.pop("q"), kw.pop("interpolation", "nearest"), **kw)  # type: ignore[arg-type]
        return fns[kind](column, **kw) if column is not None else fns[kind](**kw)

    spec = {name: build_agg(*agg) for name, agg in aggs.items()}
    flow = rh.Flow("reference-check")
    out, late = rh.io.Collect(), rh.io.Collect()
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay=f"{max_delay}ms")
    keyed = src.key_by(*keys) if keys else src
    result = keyed.window(assigner, allowed_lateness=f"{lateness}ms").agg(**spec)
    result.sink(out)
    result.late().sink(late)
    flow.run()
    return out.rows, late.rows


COUNT_AND_SUM = {"n": ("count", None), "total": ("sum", "v")}
"""``reference(..., aggs=COUNT_AND_SUM)`` for :func:`count_and_sum_per_500ms`."""


def count_and_sum_per_500ms(stream: Any) -> tuple[Any, Any]:
    """The engine's side of ``reference(rows, keys=["k"], time="ts", window=("tumbling", 500, 500),
    aggs=COUNT_AND_SUM, ...)`` on ``stream``: collectors of its results and of its late records."""
    import rheon as rh

    out, late = rh.io.Collect(), rh.io.Collect()
    result = stream.key_by("k").window(rh.tumbling("500ms")).agg(n=rh.count(), total=rh.sum("v"))
    result.sink(out)
    result.late().sink(late)
    return out, late
