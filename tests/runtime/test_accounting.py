"""Every input record is accounted for, whatever arrives (issue 10, acceptance 2).

Random hostile records — fields in any order, missing or extra, types drifting between records and
batches, nesting of any depth, NaN/inf/None/list keys, event times at the int64 edges, invalid JSON
and UTF-8 — go through a source into a tumbling window, a process function and sinks. The flow must
not stop, and for each branch ``output + dead letters + late = input``. No value may be changed on
the way: what the process function sees of a record is what was sent.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.testing import collect

NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
"""A failing example is reported as generated: shrinking flows of hostile records takes minutes."""

# -- hostile records ------------------------------------------------------------------------------

EDGE_TIMES = [2**63 - 1, -(2**63), 2**62, 2**62 - 1, -(2**62), 0, -1]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=8,
)


class Deep:
    """A value nested ``depth`` deep: built without recursion (json.dumps cannot write it)."""

    def __init__(self, depth: int, kind: str) -> None:
        self.depth, self.kind = depth, kind

    def value(self) -> Any:
        value: Any = 1
        for _ in range(self.depth):
            value = [value] if self.kind == "list" else {"a": value}
        return value

    def json(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "1" + "]" * self.depth
        return '{"a":' * self.depth + "1" + "}" * self.depth


deep = st.builds(Deep, st.sampled_from([30, 200, 1_000, 3_000]), st.sampled_from(["list", "object"]))
times = st.one_of(
    st.integers(0, 60_000),
    st.integers(0, 60_000),
    st.sampled_from(EDGE_TIMES),
    st.sampled_from(EDGE_TIMES),
    st.floats(0, 60_000),
    st.text(max_size=3),
    st.none(),
)
keys = st.one_of(
    st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.floats(), st.none(), st.lists(st.integers(), max_size=2)
)
FIELDS = {"ts": times, "k": keys, "v": st.one_of(st.integers(-5, 5), st.floats(), nested), "x": nested, "deep": deep}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=len(FIELDS)))
    if draw(st.integers(0, 9)) > 0 and "ts" not in names:
        names.append("ts")  # most records have a time
    if draw(st.integers(0, 9)) > 1 and "deep" in names:
        names.remove("deep")  # some are deep
    names = draw(st.permutations(names))
    return {name: draw(FIELDS[name]) for name in names}


def _python(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v.value() if isinstance(v, Deep) else v for k, v in record.items()}


def _json(record: dict[str, Any]) -> str:
    """The record as a JSON object (NaN and Infinity come out as tokens JSON does not have)."""
    deep = {k: v.json() for k, v in record.items() if isinstance(v, Deep)}
    text = json.dumps({k: "\0" + k if k in deep else v for k, v in record.items()})
    for name, nested_text in deep.items():
        text = text.replace(json.dumps("\0" + name), nested_text)
    return text


ANCHOR = {"k": "a", "ts": 0, "v": 1}
"""A first record with a time, so that a source whose schema is known at build time has the column
(a flow naming a time column no record has is a build-time mistake, a FlowError before running)."""

# -- checks ---------------------------------------------------------------------------------------


def _same(seen: Any, sent: Any) -> bool:
    """Whether a value reached the function unchanged (a missing struct field reads as None)."""
    if isinstance(sent, float) and math.isnan(sent):
        return isinstance(seen, float) and math.isnan(seen)
    if isinstance(sent, bool) or isinstance(seen, bool):
        return type(seen) is type(sent) and seen == sent
    if isinstance(sent, int | float) and isinstance(seen, int | float):
        return seen == sent
    if isinstance(sent, dict):
        return isinstance(seen, dict) and all(_same(seen.get(k), sent.get(k)) for k in seen.keys() | sent.keys())
    if isinstance(sent, list):
        return isinstance(seen, list) and len(seen) == len(sent) and all(map(_same, seen, sent))
    return type(seen) is type(sent) and seen == sent


class Echo:
    """Emits every record it gets, as it got it."""

    def process(self, record: dict[str, Any], ctx: Any) -> None:
        ctx.emit({"seen": json.dumps(record, default=repr), "id": record["id"]})


SENTINEL_TS = 2**61
"""Sent last to an unbounded source: its watermark fires every window before it (its own stays
open), so the window branch can be accounted for before the flow is stopped."""


def _run_and_account(
    source: rh.io.Source,
    sent: dict[int, Any],
    tmp: Path,
    feed: Callable[[], None] | None = None,
) -> None:
    """Run ``source`` (whose records carry an ``id``) into a window, a process function and file
    sinks; check the accounting of each branch and that values arrived unchanged.

    A bounded source runs to its end. For an unbounded one, ``feed`` sends the records once the
    flow runs (the last one the sentinel); the flow is stopped once every record is accounted for,
    or after a generous deadline, when the counts are compared all the same."""
    flow = rh.Flow("accounting")
    stream = flow.source(source, time="ts", max_delay="1s")
    per_k = stream.key_by("k").window(rh.tumbling("10s"), name="w").agg(n=rh.count())
    echoed = stream.key_by("id").process(Echo(), name="echo")
    for fmt in ("jsonl", "parquet", "csv"):
        stream.sink(rh.io.FileSink(str(tmp / fmt), format=fmt), name=f"files_{fmt}")
    counts, late, out, dead = collect(per_k), collect(per_k.late()), collect(echoed), collect(flow.dead_letters())
    sentinel = max(sent) if feed is not None else None  # its own window does not fire before the stop

    def pending() -> int:
        """1 while the sentinel waits in its window (not when a record far ahead made it late)."""
        return int(sentinel is not None and all(r.get("id") != sentinel for r in late.rows))

    def accounts() -> tuple[dict[str, int], int, int, int]:
        by_op: dict[str, int] = {}
        for letter in dead.rows:
            kind = letter["operator"].split(" ")[0]
            by_op[kind] = by_op.get(kind, 0) + 1
        windowed = sum(r["n"] for r in counts.rows) + pending()
        return by_op, windowed, len(late.rows), len(out.rows)

    def complete() -> bool:
        by_op, windowed, n_late, n_out = accounts()
        at_source = by_op.get("source", 0)
        return windowed + n_late + at_source + by_op.get("window", 0) >= len(sent) and n_out + at_source + by_op.get(
            "process", 0
        ) >= len(sent)

    if feed is None:
        flow.run()  # never stops
    else:
        error: list[BaseException] = []

        def run() -> None:
            try:
                flow.run(on_start=lambda _: threading.Thread(target=feed, daemon=True).start())
            except BaseException as exc:
                error.append(exc)

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        deadline = time.monotonic() + 120
        while not complete() and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        flow.stop()
        runner.join(60)
        assert not error, error  # never stops by itself

    by_op, windowed, n_late, n_out = accounts()
    total, at_source = len(sent), by_op.get("source", 0)
    assert windowed + n_late + at_source + by_op.get("window", 0) == total, (by_op, windowed, n_late)
    assert n_out + at_source + by_op.get("process", 0) == total, by_op
    for row in out.rows:
        seen, original = json.loads(row["seen"]), sent[row["id"]]
        assert isinstance(original, dict)
        for name, value in original.items():
            if name != "ts":  # the time column is typed by the flow (text numbers are numbers)
                assert _same(seen.get(name), value), (name, seen.get(name), value)
    for fmt in ("jsonl", "parquet", "csv"):
        parts = sorted((tmp / fmt).glob("part-*"))
        read = {"jsonl": pl.read_ndjson, "parquet": pl.read_parquet, "csv": pl.read_csv}[fmt]
        ids = [i for part in parts for i in read(part).get_column("id").to_list()]
        assert len(ids) == len(set(ids)), f"{fmt}: rows written twice"
        letters = sum(1 for d in dead.rows if d["operator"] == f"sink 'files_{fmt}'")
        assert len(ids) + letters + at_source == total, (fmt, len(ids), letters, by_op)


EXAMPLES = [
    [{"k": "a", "ts": 2**62 - 1}, {"k": "a", "ts": 5}],  # its window would end after the end of time
    [{"k": float("nan"), "ts": 1}, {"k": float("nan"), "ts": 2}, {"k": None, "ts": 3}, {"k": [1], "ts": 4}],
    [{"k": "a", "ts": 1, "deep": Deep(3_000, "list")}, {"k": "a", "ts": 2, "deep": Deep(30, "object")}],
    [{"ts": 2**63 - 1}, {"ts": -(2**63)}, {"ts": None}, {"ts": "soon"}, {"ts": 1.5}, {"ts": 2.0}],
    [
        {"k": "a", "ts": 1, "v": 1},
        {"v": "1", "ts": 2, "k": "a"},
        {"k": "a", "v": {"b": 1}, "ts": 3},
        {"v": 1.5, "ts": 4},
    ],
    [{"k": "a", "ts": 30_000}, {"k": "a", "ts": 1}],  # late
]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=st.lists(records(), max_size=40), batch_size=st.sampled_from([1, 3, 1000]))
@example(rows=EXAMPLES[0], batch_size=1)
@example(rows=EXAMPLES[0], batch_size=1000)
@example(rows=EXAMPLES[1], batch_size=1)
@example(rows=EXAMPLES[1], batch_size=1000)
@example(rows=EXAMPLES[2], batch_size=1)
@example(rows=EXAMPLES[2], batch_size=1000)
@example(rows=EXAMPLES[3], batch_size=1)
@example(rows=EXAMPLES[3], batch_size=1000)
@example(rows=EXAMPLES[4], batch_size=1)
@example(rows=EXAMPLES[4], batch_size=1000)
@example(rows=EXAMPLES[5], batch_size=1)
@example(rows=EXAMPLES[5], batch_size=1000)
def test_records_source_accounts_for_every_record(tmp_path_factory, rows, batch_size) -> None:
    rows = [ANCHOR, *rows]
    sent = {i: {**_python(row), "id": i} for i, row in enumerate(rows)}
    _run_and_account(rh.io.Records(list(sent.values()), batch_size=batch_size), sent, tmp_path_factory.mktemp("r"))


def _line(record: dict[str, Any], mangle: int) -> bytes:
    text = _json(record)
    if mangle == 1:
        return text[: len(text) // 2].encode()  # cut short
    if mangle == 2:
        return text.encode()[:-1] + b'"\xff\xfe"}'  # invalid UTF-8
    if mangle == 3:
        return f"[{text}]".encode()  # not an object
    return text.encode()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(
    rows=st.lists(st.tuples(records(), st.sampled_from([0, 0, 0, 0, 1, 2, 3])), max_size=40),
    files=st.integers(1, 3),
)
@example(rows=[(r, 0) for r in EXAMPLES[0]], files=2)
@example(rows=[(r, 0) for r in EXAMPLES[1]], files=2)
@example(rows=[(r, 0) for r in EXAMPLES[2]], files=2)
@example(rows=[(r, 0) for r in EXAMPLES[3]], files=2)
@example(rows=[(r, 0) for r in EXAMPLES[4]], files=2)
@example(rows=[(r, 0) for r in EXAMPLES[5]], files=2)
def test_json_lines_source_accounts_for_every_line(tmp_path_factory, rows, files) -> None:
    tmp = tmp_path_factory.mktemp("j")
    rows = [(ANCHOR, 0), *rows]
    sent: dict[int, Any] = {}
    chunks: list[list[bytes]] = [[] for _ in range(files)]
    for i, (row, mangle) in enumerate(rows):
        record = {**row, "id": i}
        line = _line(record, mangle)
        sent[i] = _python(record) if mangle == 0 else line
        chunks[i * files // max(len(rows), 1)].append(line)
    for n, lines in enumerate(chunks):
        (tmp / f"in-{n}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    _run_and_account(rh.io.JsonLines(str(tmp / "in-*.jsonl")), sent, tmp)


def payloads(rows: list[tuple[dict[str, Any], int]], *, arrays: bool = False) -> tuple[list[bytes], dict[int, Any]]:
    """Messages for an unbounded source: the anchor, hostile ones (some mangled), the sentinel; and
    what was sent, by id, for `_run_and_account`. ``arrays``: the source reads a JSON array as its
    records (MQTT, HTTP), so an array around a record is that record."""
    rows = [(ANCHOR, 0), *rows, ({"k": "a", "ts": SENTINEL_TS}, 0)]
    messages: list[bytes] = []
    sent: dict[int, Any] = {}
    for i, (row, mangle) in enumerate(rows):
        record = {**row, "id": i}
        messages.append(_line(record, mangle))
        sent[i] = _python(record) if mangle == 0 or (arrays and mangle == 3) else messages[-1]
    return messages, sent


hostile_messages = st.lists(st.tuples(records(), st.sampled_from([0, 0, 0, 0, 1, 2, 3])), max_size=30)
"""Records for message sources, each sent as it is or mangled (cut short, invalid UTF-8, an array)."""
