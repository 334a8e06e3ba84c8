"""Keyed-state backends: same behaviour in memory and in RocksDB; incremental checkpoints."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

import rheon as rh
from rheon.state.backends import MemoryBackend, RocksDBBackend, make_backend
from rheon.state.checkpoints import CheckpointStore
from rheon.state.shared import SharedFiles
from tests.crash import Crash, committed_parts, crash_at_row

BACKENDS = ["memory", "rocksdb"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_snapshot_and_restore_round_trip_with_changes_and_deletions(tmp_path, kind):
    backend = make_backend(kind, tmp_path / "work")
    if isinstance(backend, RocksDBBackend):
        backend.CACHE_KEYS = 10  # force evictions, so reads really go to disk
    files = SharedFiles(tmp_path / "shared", "op")
    model: dict = {}
    rnd = random.Random(1)
    saved = None
    for round_ in range(6):
        for _ in range(300):
            key = rnd.randrange(100)
            cells = backend.cells(key)
            if rnd.random() < 0.2:
                cells.clear()
                model.pop(key, None)
            else:
                cells["n"] = (round_, 0)
                model[key] = {"n": (round_, 0)}
        backend.end_batch()
        saved = backend.snapshot(files)
    assert saved is not None
    restored = make_backend(kind, tmp_path / "work2")
    restored.restore(saved, files)
    assert len(restored) == len(model)
    for key, value in model.items():
        assert restored.cells(key) == value
    backend.close()
    restored.close()


def test_memory_checkpoints_are_a_base_and_small_deltas(tmp_path):
    backend = MemoryBackend()
    files = SharedFiles(tmp_path, "op")
    for key in range(10_000):
        backend.cells(key)["v"] = (key, 0)
    backend.end_batch()
    first = backend.snapshot(files)["chain"]
    backend.cells(5)["v"] = (-1, 0)
    backend.end_batch()
    second = backend.snapshot(files)["chain"]
    assert second[0] == first[0]
    assert len(second) == 2
    assert (tmp_path / second[1]).stat().st_size < (tmp_path / second[0]).stat().st_size / 100


def test_unreferenced_shared_files_are_collected(tmp_path):
    store = CheckpointStore(tmp_path)
    flow = rh.Flow("gc")
    rows = [{"k": i % 50, "ts": i} for i in range(2_000)]
    flow.source(rh.io.Records(rows, batch_size=100), time="ts").key_by("k").reduce(lambda a, r: r, name="r").sink(
        rh.io.Collect()
    )
    flow.run(checkpoint_dir=tmp_path, checkpoint_every="0ms")
    keep: set[str] = set()
    for cid in store._complete_ids():
        keep.update(store.load(cid).operators["r"].shared)
    on_disk = {p.name for p in store.shared_dir.iterdir()}
    assert on_disk == keep
    assert 1 <= len(on_disk) <= 10


def test_unknown_backend_is_a_flow_error():
    with pytest.raises(rh.FlowError, match=r"state_backend must be one of memory, rocksdb \(got 'redis'\)"):
        rh.Flow("x", state_backend="redis")


def test_rocksdb_flow_survives_crashes_like_memory(tmp_path):
    rnd = random.Random(4)
    rows = [{"k": rnd.randrange(30), "v": rnd.randrange(10), "ts": i * 10} for i in range(1_500)]

    def build(kind: str, out: Path, crash_after: int | None = None) -> rh.Flow:
        flow = rh.Flow("backend", state_backend=kind)
        src = flow.source(rh.io.Records(rows, batch_size=40), time="ts", name="in")

        def count(record, ctx):
            n = ctx.state("n", default=0)
            n.set(n.get() + record["v"])
            if n.get() > 50:
                ctx.emit({"k": ctx.key, "n": n.get(), "ts": record["ts"]})
                n.clear()

        src.key_by("k").process(count, name="count").sink(rh.io.FileSink(out / "process"), name="p_out")
        src.key_by("k").reduce(lambda a, r: {**r, "v": a["v"] + r["v"]}, name="sum").sink(
            rh.io.FileSink(out / "reduce"), name="r_out"
        )
        src.sink(crash_at_row(crash_after), name="watch")
        return flow

    results = {}
    for kind in BACKENDS:
        out = tmp_path / kind
        for crash_after in (200, 900):
            with contextlib.suppress(Crash):
                build(kind, out, crash_after).run(checkpoint_dir=tmp_path / f"ckpt-{kind}", checkpoint_every="0ms")
        build(kind, out).run(checkpoint_dir=tmp_path / f"ckpt-{kind}", checkpoint_every="0ms")
        results[kind] = committed_parts(out, "process", "reduce")
    reference_out = tmp_path / "reference"
    build("memory", reference_out).run()
    reference = committed_parts(reference_out, "process", "reduce")
    assert results["memory"] == reference
    assert results["rocksdb"] == reference
    assert len(reference["process"]) > 50


def test_state_is_stored_per_key_group(tmp_path):
    from rheon.state.keyed import KEY_GROUPS, key_group

    memory = MemoryBackend()
    rocks = RocksDBBackend(tmp_path / "work")
    keys = [f"card-{i}" for i in range(500)] + list(range(500))
    for backend in (memory, rocks):
        for key in keys:
            backend.cells(key)["v"] = (str(key), 0)
        backend.end_batch()
    files = SharedFiles(tmp_path / "shared", "op")
    saved = memory.snapshot(files)
    mine = set(range(0, KEY_GROUPS, 4))  # a worker owning a quarter of the key groups
    part = MemoryBackend()
    part.restore(saved, files, key_groups=mine)
    assert set(part.data) == {k for k in keys if key_group(k) in mine}
    assert 0 < len(part.data) < len(keys)
    # RocksDB keys begin with their key group, so each group is one contiguous key range.
    raw_keys = list(rocks.db.keys())
    for raw in raw_keys:
        assert 0 <= raw[0] < KEY_GROUPS
    firsts = [raw[0] for raw in raw_keys]
    assert firsts == sorted(firsts)
    rocks.close()


@pytest.mark.parametrize(("before", "after"), [("memory", "rocksdb"), ("rocksdb", "memory")])
def test_a_snapshot_restores_into_the_other_backend(tmp_path, before, after):
    files = SharedFiles(tmp_path / "shared", "op")
    writer = make_backend(before, tmp_path / "w")
    for key in range(200):
        writer.cells(key)["n"] = (key, 0)
    writer.end_batch()
    writer.snapshot(files)
    writer.cells(7).clear()  # a deletion after the first checkpoint (a delta for memory)
    writer.cells("new")["n"] = ("x", 1)
    writer.end_batch()
    saved = writer.snapshot(files)
    writer.close()
    reader = make_backend(after, tmp_path / "r")
    reader.restore(saved, files)
    assert len(reader) == 200
    assert reader.cells(7) == {}
    assert reader.cells(8) == {"n": (8, 0)}
    assert reader.cells("new") == {"n": ("x", 1)}
    reader.end_batch()
    again = make_backend(before, tmp_path / "again")  # and back, from the reader's own checkpoint
    again.restore(reader.snapshot(files), files)
    assert len(again) == 200
    assert again.cells(8) == {"n": (8, 0)}
    reader.close()
    again.close()


def test_unknown_snapshot_format_is_a_flow_error_naming_the_operator(tmp_path):
    files = SharedFiles(tmp_path, "per_card")
    with pytest.raises(rh.FlowError, match=r"'per_card': its keyed state .* \(backend 'redis', fields \['backend'\]\)"):
        MemoryBackend().restore({"backend": "redis"}, files)


@pytest.mark.parametrize(("before", "after"), [("memory", "rocksdb"), ("rocksdb", "memory")])
def test_switching_state_backend_between_runs_resumes_the_state(tmp_path, before, after):
    """Like Flink savepoints in the canonical format: the state moves to the new backend."""
    rows = [{"k": i % 3, "v": i, "ts": i} for i in range(12)]

    def build(backend: str, stop_after: int | None = None) -> tuple[rh.Flow, rh.io.Collect]:
        flow = rh.Flow("switch", state_backend=backend)
        out = rh.io.Collect()
        src = flow.source(rh.io.Records(rows, batch_size=2), time="ts", name="in")

        def count(record, ctx):
            n = ctx.state("n", default=0)
            n.set(n.get() + 1)
            ctx.state.list("seen").append(record["v"])
            ctx.emit({"k": ctx.key, "n": n.get(), "seen": len(ctx.state.list("seen"))})

        keyed = src.key_by("k")
        keyed.process(count, name="count").sink(out, name="out")
        keyed.reduce(lambda a, r: {**r, "v": a["v"] + r["v"]}, name="sum").sink(out, name="sums")

        def stop(row):
            if stop_after is not None and row["ts"] + 1 >= stop_after:
                flow.stop()

        src.sink(stop, name="stop")
        return flow, out

    reference_flow, reference = build(before)
    reference_flow.run()
    first, head = build(before, stop_after=6)
    first.run(checkpoint_dir=tmp_path)
    second, tail = build(after)
    second.run(checkpoint_dir=tmp_path)
    assert 0 < len(head.rows) < len(reference.rows)
    assert head.rows + tail.rows == reference.rows
