"""Checkpoints and recovery: a resumed run writes exactly what an uninterrupted one writes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import random
import resource
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.core.errors import CheckpointError
from rheon.state.checkpoints import CheckpointStore
from tests.crash import Crash, crash_at_row
from tests.crash import committed as committed_rows

EVENTS = [
    {"k": i % 5, "v": (i * 37) % 11, "ts": i * 40 + (i * 53) % 300} for i in range(600)
]  # out of order by up to 300 ms


def build(
    src_rows,
    out_dir: Path,
    *,
    batch_size: int,
    stop_after: int | None = None,
    crash_after: int | None = None,
    flow_holder: list | None = None,
    state_backend: str = "memory",
) -> rh.Flow:
    flow = rh.Flow("recover", state_backend=state_backend)
    if flow_holder is not None:
        flow_holder.append(flow)
    tx = flow.source(rh.io.Records(src_rows, batch_size=batch_size), time="ts", max_delay="200ms", name="tx")
    windows = tx.key_by("k").window(rh.tumbling("1s"), name="per_k").agg(n=rh.count(), total=rh.sum("v"))
    sessions = tx.key_by("k").window(rh.session(gap="150ms"), name="sess").agg(n=rh.count())
    totals = tx.key_by("k").reduce(lambda acc, r: {**r, "v": acc["v"] + r["v"]}, name="running")
    seen = [0]

    def watch(row: dict) -> None:
        seen[0] += 1
        if crash_after is not None and seen[0] == crash_after:
            raise Crash
        if stop_after is not None and seen[0] == stop_after:
            flow.stop()

    windows.with_columns(kind=rh.lit("w")).select("kind", "k", "window_start", "n", "total").union(
        sessions.with_columns(kind=rh.lit("s"), total=rh.lit(None, pl.Int64)).select(
            "kind", "k", "window_start", "n", "total"
        )
    ).sink(rh.io.FileSink(out_dir / "windows"), name="windows_out")
    totals.sink(rh.io.FileSink(out_dir / "totals", format="csv"), name="totals_out")
    totals.sink(watch, name="watch")
    return flow


def committed(out_dir: Path) -> dict[str, list[dict]]:
    result = {}
    for name, reader in (("windows", pl.read_ndjson), ("totals", pl.read_csv)):
        files = sorted((out_dir / name).glob("part-*"))
        assert not [p for p in (out_dir / name).iterdir() if p.name.startswith(".")], "in-progress files left"
        result[name] = [row for f in files for row in reader(f).to_dicts()]
    # The two window kinds meet in a union, whose interleaving follows batch boundaries (as in
    # Flink); each kind's own rows are in a fixed order.
    rows = result.pop("windows")
    result["tumbling"] = [r for r in rows if r["kind"] == "w"]
    result["sessions"] = [r for r in rows if r["kind"] == "s"]
    return result


def uninterrupted(tmp_path: Path, rows=EVENTS, batch_size: int = 50) -> dict[str, list[dict]]:
    out = tmp_path / "reference"
    build(rows, out, batch_size=batch_size).run()
    return committed(out)


def test_stop_and_resume_gives_the_uninterrupted_output(tmp_path):
    expected = uninterrupted(tmp_path)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    holder: list = []
    build(EVENTS, out, batch_size=50, stop_after=170, flow_holder=holder).run(checkpoint_dir=ckpt)
    first = holder[0].metrics()
    assert first.records_in < len(EVENTS)  # it really stopped early
    holder.clear()
    build(EVENTS, out, batch_size=50, flow_holder=holder).run(checkpoint_dir=ckpt)
    second = holder[0].metrics()
    assert second.restored_from is not None
    assert first.records_in + second.records_in == len(EVENTS)
    assert committed(out) == expected


@pytest.mark.parametrize("crash_after", [1, 90, 333, 599])
def test_crash_and_restart_gives_the_uninterrupted_output(tmp_path, crash_after):
    expected = uninterrupted(tmp_path)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        build(EVENTS, out, batch_size=30, crash_after=crash_after).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    build(EVENTS, out, batch_size=30).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert committed(out) == expected


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    batch_size=st.integers(3, 80),
    crashes=st.lists(st.integers(1, 249), min_size=1, max_size=3),
)
def test_property_any_crashes_give_the_uninterrupted_output(tmp_path_factory, seed, batch_size, crashes):
    rnd = random.Random(seed)
    rows = [{"k": rnd.randrange(4), "v": rnd.randrange(10), "ts": i * 30 + rnd.randrange(250)} for i in range(250)]
    base = tmp_path_factory.mktemp("prop")
    expected = uninterrupted(base, rows, batch_size=batch_size)
    out, ckpt = base / "out", base / "ckpt"
    for crash_after in sorted(crashes):
        with contextlib.suppress(Crash):
            build(rows, out, batch_size=batch_size, crash_after=crash_after).run(
                checkpoint_dir=ckpt, checkpoint_every="0ms"
            )
    build(rows, out, batch_size=batch_size).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert committed(out) == expected


def test_a_finished_run_restarted_does_nothing_more(tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    holder: list = []
    build(EVENTS, out, batch_size=100).run(checkpoint_dir=ckpt)
    before = committed(out)
    build(EVENTS, out, batch_size=100, flow_holder=holder).run(checkpoint_dir=ckpt)
    assert holder[0].metrics().records_in == 0
    assert committed(out) == before


def test_incompatible_change_is_a_clear_error_naming_the_operator(tmp_path):
    ckpt = tmp_path / "ckpt"
    rows = [{"k": 1, "ts": 0}]

    def flow_with(window, name="per_k"):
        flow = rh.Flow("compat")
        src = flow.source(rh.io.Records(rows), time="ts", name="tx")
        src.key_by("k").window(window, name=name).agg(n=rh.count()).sink(rh.io.Collect(), name="out")
        return flow

    flow_with(rh.tumbling("1m")).run(checkpoint_dir=ckpt)
    with pytest.raises(
        rh.FlowError,
        match=r"window 'per_k': its state in checkpoint .*chk-00000001 was written by a different operator.*tumbling\(60000ms\).*tumbling\(30000ms\)",
    ):
        flow_with(rh.tumbling("30s")).run(checkpoint_dir=ckpt)
    with pytest.raises(rh.FlowError, match=r"holds state of per_k, which the flow no longer has"):
        flow_with(rh.tumbling("1m"), name="renamed").run(checkpoint_dir=ckpt)
    other = rh.Flow("someone-else")
    other.source(rh.io.Records(rows)).sink(rh.io.Collect())
    with pytest.raises(rh.FlowError, match=r"belongs to flow 'compat'\. Use one checkpoint_dir per flow"):
        other.run(checkpoint_dir=ckpt)


def test_compatible_change_resumes(tmp_path):
    """Stateless steps and sinks may change between runs; state is found by operator name."""
    ckpt, rows = tmp_path / "ckpt", [{"k": 1, "ts": t} for t in (0, 500, 1500)]
    first = rh.Flow("compat")
    src = first.source(rh.io.Records(rows, batch_size=1), time="ts", name="tx")
    seen: list = []

    def stop_at_first(row):
        seen.append(row)
        first.stop()

    src.key_by("k").reduce(lambda a, r: {**r, "n": a.get("n", 1) + 1}, name="count").sink(stop_at_first, name="out")
    first.run(checkpoint_dir=ckpt)

    second = rh.Flow("compat")
    src = second.source(rh.io.Records(rows, batch_size=1), time="ts", name="tx")
    out = rh.io.Collect()
    src.filter(rh.col("ts") >= 0).key_by("k").reduce(lambda a, r: {**r, "n": a.get("n", 1) + 1}, name="count").sink(
        out, name="new_sink"
    )
    second.run(checkpoint_dir=ckpt)
    assert [r.get("n") for r in seen + out.rows] == [None, 2, 3]


def test_file_sink_without_checkpoints_commits_at_the_end(tmp_path):
    flow = rh.Flow("plain")
    flow.source(rh.io.Records([{"a": 1}, {"a": 2}], batch_size=1)).sink(rh.io.FileSink(tmp_path, format="parquet"))
    flow.run()
    parts = list(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 1
    assert pl.read_parquet(parts[0])["a"].to_list() == [1, 2]


def _resume_with(tmp_path: Path, first_fn, second_fn) -> list[dict]:
    """Run ``first_fn`` over one record and checkpoint, then resume with ``second_fn``."""
    rows = [{"k": 1, "ts": t} for t in range(3)]
    outputs = []
    for fn, stop in ((first_fn, True), (second_fn, False)):
        flow = rh.Flow("kinds")
        out = rh.io.Collect()
        src = flow.source(rh.io.Records(rows, batch_size=1), time="ts", name="in")
        src.key_by("k").process(fn, name="p").sink(out, name="out")
        if stop:
            src.sink(lambda row, flow=flow: flow.stop(), name="stop")
        flow.run(checkpoint_dir=tmp_path)
        outputs.append(out.rows)
    return outputs


def _as_value(row, ctx):
    ctx.state("x", default=0).set(1)


def _as_list(row, ctx):
    ctx.state.list("x").append(1)


def _as_map(row, ctx):
    ctx.state.map("x").put("a", 1)


_AS = {"value": (_as_value, r"ctx\.state\('x'\)"), "list": (_as_list, r"ctx\.state\.list\('x'\)")}
_AS["map"] = (_as_map, r"ctx\.state\.map\('x'\)")


@pytest.mark.parametrize(
    ("saved", "asked"), [("list", "value"), ("value", "list"), ("value", "map"), ("map", "list"), ("list", "map")]
)
def test_state_asked_for_as_another_kind_after_restore_is_a_clear_error(tmp_path, saved, asked):
    """Flink: StateMigrationException. Before, the other kind's cells were read back as garbage."""
    first, how_saved = _AS[saved]
    second, how_asked = _AS[asked]
    second.__qualname__ = first.__qualname__  # the same function, edited between runs
    try:
        with pytest.raises(
            rh.FlowError,
            match=rf"process 'p': state 'x' is {saved} state in the checkpoint this run resumed from, but the "
            rf"function now asks for {asked} state \({how_asked}\)\. Read it as {how_saved}, give the {asked} "
            r"state another name, or start from a new checkpoint_dir\.",
        ):
            _resume_with(tmp_path, first, second)
    finally:
        second.__qualname__ = second.__name__


def test_a_new_ttl_resumes_but_a_new_kind_is_refused(tmp_path):
    """A TTL does not change how cells are stored (each keeps its write time); the kind does."""

    def first(row, ctx):
        ctx.state.list("x").append(row["ts"])

    def second(row, ctx):
        seen = ctx.state.list("x", ttl="1h")
        seen.append(row["ts"])
        ctx.emit({"seen": seen.get()})

    second.__qualname__ = first.__qualname__
    assert _resume_with(tmp_path / "ttl", first, second)[1] == [{"seen": [0, 1]}, {"seen": [0, 1, 2]}]
    _as_value.__qualname__ = first.__qualname__
    try:
        with pytest.raises(rh.FlowError, match=r"state 'x' is list state in the checkpoint"):
            _resume_with(tmp_path / "kind", first, _as_value)
    finally:
        _as_value.__qualname__ = _as_value.__name__


def test_flow_level_checkpoint_settings_apply_without_run_arguments(tmp_path):
    rows = [{"k": i % 2, "ts": i} for i in range(8)]

    def build(stop_at: int | None = None) -> tuple[rh.Flow, rh.io.Collect]:
        flow = rh.Flow("defaults", checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
        out = rh.io.Collect()
        src = flow.source(rh.io.Records(rows, batch_size=1), time="ts", name="in")
        src.key_by("k").reduce(lambda a, r: {**r, "n": a.get("n", 1) + 1}, name="count").sink(out, name="out")
        src.sink(lambda row: flow.stop() if row["ts"] == stop_at else None, name="stop")
        return flow, out

    first, head = build(stop_at=3)
    first.run()
    store = CheckpointStore(tmp_path / "ckpt")
    assert (store.latest_id() or 0) >= 3  # checkpoint_every="0ms": after batches, not only at the stop
    second, tail = build()
    second.run()
    assert [r.get("n") for r in head.rows + tail.rows] == [None, None, 2, 2, 3, 3, 4, 4]
    assert second.metrics().records_in == 4  # resumed, not replayed from the start


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_file_sources_resume_mid_file_after_a_crash(tmp_path, fmt):
    """A file source's position (file and row) is in the checkpoint: after crashes in the middle
    of a file, the committed output equals an uninterrupted run's, row for row."""
    frame = pl.DataFrame(EVENTS)
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    for part, chunk in enumerate(frame.iter_slices(250)):  # three files, the crashes land inside them
        path = src_dir / f"events-{part}.{fmt}"
        {"jsonl": chunk.write_ndjson, "csv": chunk.write_csv, "parquet": chunk.write_parquet}[fmt](path)
    source = {"jsonl": rh.io.JsonLines, "csv": rh.io.Csv, "parquet": rh.io.Parquet}[fmt]

    def flow_for(out: Path, crash_after: int | None = None) -> rh.Flow:
        flow = rh.Flow("files")
        tx = flow.source(source(src_dir / f"*.{fmt}", batch_size=40), time="ts", max_delay="200ms", name="tx")
        tx.key_by("k").window(rh.tumbling("1s")).agg(n=rh.count(), total=rh.sum("v")).sink(rh.io.FileSink(out))
        tx.sink(crash_at_row(crash_after))
        return flow

    flow_for(tmp_path / "ref").run()
    expected = committed_rows(tmp_path / "ref")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    for crash_after in (130, 300):  # records seen by this run before it dies
        with pytest.raises(Crash):
            flow_for(out, crash_after).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    flow_for(out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert len(expected) > 10
    assert committed_rows(out) == expected


# -- damaged checkpoints and failed writes --------------------------------------------------------


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _newest_own_shared_file(ckpt: Path, newest: int) -> Path:
    """A keyed-state file (or RocksDB checkpoint directory) in checkpoint_dir/shared that the
    newest checkpoint uses and the one before it does not."""

    def shared(cid: int) -> set[str]:
        manifest = json.loads((ckpt / f"chk-{cid:08d}" / "manifest.json").read_bytes())
        return {name for entry in manifest["operators"].values() for name in entry["shared"]}

    return ckpt / "shared" / sorted(shared(newest) - shared(newest - 1))[0]


def _damage(kind: str, chk: Path) -> str:
    """Damage checkpoint directory ``chk``; return what the report must say about it."""
    if kind == "one byte flipped in an .arrow file":
        _flip_one_byte(max(chk.glob("*.arrow"), key=lambda p: p.stat().st_size))
        return "-panes.arrow does not match its checksum"
    if kind == "a .pkl file truncated":
        for path in chk.glob("*.pkl"):
            path.write_bytes(path.read_bytes()[:10])
        return ".pkl is truncated (10 of"
    if kind == "the manifest deleted":
        (chk / "manifest.json").unlink()
        return "manifest.json is missing"
    assert kind == "a keyed-state file deleted"
    shared = _newest_own_shared_file(chk.parent, int(chk.name.removeprefix("chk-")))
    shared.unlink()
    return f"shared/{shared.name} is missing"


DAMAGES = [
    "one byte flipped in an .arrow file",
    "a .pkl file truncated",
    "the manifest deleted",
    "a keyed-state file deleted",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_is_reported_and_the_flow_resumes_from_the_one_before(tmp_path, caplog, damage):
    """Before, a damaged file gave a raw UnpicklingError/InvalidFooter/FileNotFoundError, or, for
    a changed byte in an .arrow file, wrong sums without any error."""
    expected = uninterrupted(tmp_path)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        build(EVENTS, out, batch_size=30, crash_after=333).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    newest = CheckpointStore(ckpt).latest_id()
    assert newest is not None
    assert newest >= 3
    problem = _damage(damage, ckpt / f"chk-{newest:08d}")
    holder: list = []
    with caplog.at_level(logging.WARNING, logger="rheon"):
        build(EVENTS, out, batch_size=30, flow_holder=holder).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert holder[0].metrics().restored_from == newest - 1
    damaged = [r.getMessage() for r in caplog.records if "checkpoint_damaged" in r.getMessage()]
    assert len(damaged) == 1
    assert f"chk-{newest:08d}" in damaged[0]
    assert problem in damaged[0]
    assert committed(out) == expected


def test_a_damaged_file_of_a_rocksdb_checkpoint_is_found_too(tmp_path, caplog):
    """A RocksDB checkpoint is a directory in checkpoint_dir/shared: each of its files is checked.
    Its table files are hard links shared with older checkpoints; its MANIFEST is its own."""
    pytest.importorskip("rocksdict")
    expected = uninterrupted(tmp_path)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        build(EVENTS, out, batch_size=30, crash_after=333, state_backend="rocksdb").run(
            checkpoint_dir=ckpt, checkpoint_every="0ms"
        )
    newest = CheckpointStore(ckpt).latest_id()
    assert newest is not None
    rocksdb_dir = _newest_own_shared_file(ckpt, newest)
    assert rocksdb_dir.is_dir()
    rocksdb_manifest = next(rocksdb_dir.glob("MANIFEST-*")).relative_to(ckpt / "shared").as_posix()
    _flip_one_byte(ckpt / "shared" / rocksdb_manifest)
    holder: list = []
    with caplog.at_level(logging.WARNING, logger="rheon"):
        build(EVENTS, out, batch_size=30, flow_holder=holder, state_backend="rocksdb").run(
            checkpoint_dir=ckpt, checkpoint_every="0ms"
        )
    assert holder[0].metrics().restored_from == newest - 1
    assert f"shared/{rocksdb_manifest} does not match its checksum" in caplog.text
    assert committed(out) == expected


def test_a_flow_with_no_intact_checkpoint_refuses_to_start(tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        build(EVENTS, out, batch_size=30, crash_after=333).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    checkpoints = sorted(ckpt.glob("chk-*"))
    assert len(checkpoints) == 3
    for chk in checkpoints:
        _flip_one_byte(max(chk.glob("*.arrow"), key=lambda p: p.stat().st_size))
    before = sorted(p.name for p in out.rglob("*"))
    flow = build(EVENTS, out, batch_size=30)
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint_dir {ckpt}: no intact checkpoint to resume from \(chk-\d+: op-\d+-panes\.arrow does not "
        r"match its checksum .*\)\. Start with a new checkpoint_dir, or delete the damaged chk-\* directories",
    ):
        flow.run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written, nothing committed
    assert sorted(ckpt.glob("chk-*")) == checkpoints


def test_a_checkpoint_write_that_fails_says_so_naming_the_operator_and_the_path(tmp_path):
    """The disk fills up while keyed state is written. As root a chmod does not stop writes, so the
    full disk is RLIMIT_FSIZE: any write past 256 KiB fails with EFBIG (Python ignores SIGXFSZ)."""
    rows = [{"k": i, "v": i, "ts": i} for i in range(20_000)]
    flow = rh.Flow("full")
    src = flow.source(rh.io.Records(rows, batch_size=len(rows)), time="ts", name="in")
    src.key_by("k").reduce(lambda a, r: {**r, "v": a["v"] + r["v"]}, name="running").sink(rh.io.Collect())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        with pytest.raises(CheckpointError) as info:
            flow.run(checkpoint_dir=tmp_path / "ckpt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EFBIG
    assert str(info.value).startswith(
        f"reduce 'running': checkpoint 1 could not be written: writing {tmp_path / 'ckpt' / 'shared'}"
    )
    assert "failed: File too large. Free space on that disk" in str(info.value)


def test_a_checkpoint_dir_that_is_a_file_is_a_clear_error(tmp_path):
    """A read-only directory does not stop root (tests run as root): a file where the directory
    must be does."""
    (tmp_path / "ckpt").write_text("")
    flow = rh.Flow("blocked")
    flow.source(rh.io.Records([{"a": 1}])).sink(rh.io.Collect())
    with pytest.raises(CheckpointError, match=rf"checkpoint_dir '{tmp_path / 'ckpt'}' cannot be used: File exists"):
        flow.run(checkpoint_dir=tmp_path / "ckpt")
