"""State inspection: flow.state() while and after a run, rh.inspect() and rheon inspect on checkpoints."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import rheon as rh
from rheon.cli.main import cli
from rheon.state.keyed import key_group

TIMEOUT_S = 60.0


def _add(record, ctx):
    total = ctx.state("total", default=0)
    total.set(total.get() + 1)
    twice = ctx.state("twice", default=0)
    twice.set(twice.get() + 2)
    ctx.timers.register_event_time(record["ts"] + 3_600_000)


def _records_in(flow: rh.Flow) -> int:
    stats = flow.metrics()
    return stats.records_in if stats is not None else 0


def _wait_for(check, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_state_is_read_while_the_flow_runs_between_batches(backend):
    flow = rh.Flow("live", state_backend=backend)
    src = rh.io.Generator(lambda i: {"card": f"c{i % 5}"}, rate=5_000, timestamp="ts")
    keyed = flow.source(src, time="ts", name="tx").key_by("card")
    keyed.process(_add, name="counts").sink(rh.io.Collect())
    keyed.window(rh.tumbling("1h"), name="hourly").agg(n=rh.count()).sink(rh.io.Collect())
    runner = threading.Thread(target=flow.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        _wait_for(lambda: _records_in(flow) > 500, "records")
        first = flow.state("counts")
        assert sorted(first.get_column("key").to_list()) == [f"c{i}" for i in range(5)]
        assert (first.get_column("twice") == 2 * first.get_column("total")).all()  # never half a record
        _wait_for(
            lambda: flow.state("counts").get_column("total").sum() > first.get_column("total").sum(), "more state"
        )
        panes = flow.state("hourly")
        assert panes.height >= 5
        with pytest.raises(rh.FlowError, match=r"flow 'live' has no operator 'nope' \(operators: counts, "):
            flow.state("nope")
    finally:
        flow.stop()
        runner.join(TIMEOUT_S)
    assert not runner.is_alive()


def test_a_stateless_operator_says_so():
    flow = rh.Flow("plain")
    flow.source(rh.io.Records([{"x": 1}])).filter(rh.col("x") > 0, name="pos").sink(rh.io.Collect())
    with pytest.raises(rh.FlowError, match="has not run"):
        flow.state("pos")
    flow.run()
    with pytest.raises(rh.FlowError, match="filter 'pos' keeps no state"):
        flow.state("pos")


def _checkpointed(directory: Path, backend: str = "memory") -> None:
    rows = [{"card": f"c{i % 4}", "amount": i, "ts": i * 1_000} for i in range(40)]
    flow = rh.Flow("cards", state_backend=backend)
    keyed = flow.source(rh.io.Records(rows, batch_size=7), time="ts", name="tx").key_by("card")
    keyed.process(_add, name="counts").sink(rh.io.Collect())
    keyed.dedup(within="10s", name="once").sink(rh.io.Collect())
    keyed.reduce(lambda acc, r: {**r, "amount": acc["amount"] + r["amount"]}, name="sums").sink(rh.io.Collect())
    keyed.window(rh.tumbling("1m"), name="per_minute").agg(n=rh.count()).sink(rh.io.Collect())
    flow.run(checkpoint_dir=directory, duration="1h", drain=False)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_inspect_reads_a_checkpoint_without_running_the_flow(tmp_path, backend):
    _checkpointed(tmp_path, backend)
    view = rh.inspect(tmp_path)
    assert view.flow == "cards"
    assert view.finished
    summary = {row["operator"]: row for row in view.summary().to_dicts()}
    assert summary["counts"]["keys"] == 4
    assert summary["counts"]["key_groups"] == len({key_group(f"c{i}") for i in range(4)})
    assert summary["sums"]["keys"] == 4
    assert summary["tx"]["kind"] == "source"
    assert all(row["bytes"] > 0 for row in summary.values() if row["kind"] != "sink")
    counts = view.state("counts").sort("key")
    assert counts.select("key", "total").rows() == [(f"c{i}", 10) for i in range(4)]
    sums = view.state("sums").sort("key")
    assert [acc["amount"] for acc in sums.get_column("acc").to_list()] == [sum(range(i, 40, 4)) for i in range(4)]
    assert isinstance(view.state("per_minute"), pl.DataFrame)


def test_rheon_inspect_lists_operators_and_shows_one(tmp_path):
    _checkpointed(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "of flow 'cards'" in listed.output
    for name in ("tx", "counts", "once", "sums", "per_minute"):
        assert f"│ {name} " in listed.output
    shown = runner.invoke(cli, ["inspect", str(tmp_path), "--operator", "counts", "--rows", "2"])
    assert shown.exit_code == 0, shown.output
    assert "process 'counts': 4 rows" in shown.output
    assert "total" in shown.output
    unknown = runner.invoke(cli, ["inspect", str(tmp_path), "--operator", "nope"])
    assert unknown.exit_code == 1
    assert "has no operator 'nope' (operators: tx, counts" in unknown.output


def test_inspect_of_an_empty_directory_says_there_is_no_checkpoint(tmp_path):
    with pytest.raises(rh.FlowError, match="no checkpoint in"):
        rh.inspect(tmp_path)


def test_a_lock_step_pattern_shows_its_open_attempts_per_key():
    # begin("a").next("b", rising) with no_skip: every row starts an attempt, so after each key's
    # last row one is open at depth 1, holding that row; the state is one row per key with it.
    from rheon import cep

    flow = rh.Flow("rising")
    src = rh.io.Generator(lambda i: {"card": f"c{i % 3}", "v": i}, rate=5_000, timestamp="ts")
    rising = cep.begin("a").next("b", lambda e, m: e["v"] > m["a"][-1]["v"])
    flow.source(src, time="ts", max_delay="1ms").key_by("card").match(rising, after_match="no_skip", name="rises").sink(
        rh.io.Collect()
    )
    runner = threading.Thread(target=flow.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        _wait_for(lambda: _records_in(flow) > 300, "records")
        _wait_for(lambda: flow.state("rises").height == 3, "a row per key")
        state = flow.state("rises")
        assert sorted(state.get_column("card").to_list()) == ["c0", "c1", "c2"]
        assert (state.get_column("open") & 1 == 1).all()
        assert (state.get_column("back_1_v") % 3 == state.get_column("card").str.slice(1).cast(pl.Int64)).all()
        assert (state.get_column("seq") > 0).all()
    finally:
        flow.stop()
        runner.join(TIMEOUT_S)
    assert not runner.is_alive()
