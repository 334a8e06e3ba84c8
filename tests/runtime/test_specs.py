"""The logical plan is data: a spec per step, built into operators by the runtime."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

import rheon as rh
from rheon import cep
from rheon.runtime import build, specs
from rheon.runtime.plan import make_plan

BUILT_BY_THE_EXECUTOR = {"Spec", "SourceSpec", "SinkSpec", "RowSpec", "DeadLettersSpec"}


def test_every_operator_spec_has_a_builder():
    operator_specs = {getattr(specs, name) for name in specs.__all__ if name not in BUILT_BY_THE_EXECUTOR}
    assert operator_specs == set(build._BUILDERS)


def test_specs_are_frozen_data():
    spec = specs.DedupSpec(("card",), "ts", 1000, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.within_ms = 5  # type: ignore[misc]


def _every_kind() -> rh.Flow:
    rows = [
        {"card": c, "amount": a, "ts": t, "ok": a < 50}
        for t, (c, a) in enumerate([("a", 1), ("a", 900), ("b", 5)] * 20)
    ]
    table = pl.DataFrame({"card": ["a", "b"], "owner": ["ann", "bob"]})
    flow = rh.Flow("kinds")
    tx = flow.source(rh.io.Records(rows), time="ts", max_delay="5ms", name="tx")
    other = flow.source(rh.io.Records([{"card": "a", "at": 3}]), time="at", name="other")
    retimed = other.with_time(rh.col("at").alias("ts"), name="retime").select("card", "ts", name="pick")
    both = tx.select("card", "ts").union(retimed, name="both")
    both.sink(rh.io.Collect(), name="both_out")
    enriched = tx.join(table, on="card", name="owners").with_columns(big=rh.col("amount") > 100, name="flag")
    keyed = enriched.filter(rh.col("amount") > 0, name="positive").key_by("card")
    windows = keyed.window(rh.tumbling("10ms"), name="per_card").agg(n=rh.count(), p50=rh.median("amount"))
    windows.top_n(1, by="n", name="best").sink(rh.io.Collect(), name="best_out")
    keyed.top_n(2, by="amount", name="running").sink(rh.io.Collect(), name="running_out")
    keyed.dedup(within="5ms", name="once").sink(rh.io.Collect(), name="once_out")
    keyed.changes("big", name="flips").sink(rh.io.Collect(), name="flips_out")
    keyed.match(cep.begin("small", rh.col("amount") < 10).next("big", rh.col("amount") > 500), name="probe").sink(
        rh.io.Collect(), name="probe_out"
    )
    keyed.reduce(lambda acc, r: {**r, "amount": acc["amount"] + r["amount"]}, name="running_sum").sink(
        rh.io.Collect(), name="sum_out"
    )
    keyed.process(lambda r, ctx: ctx.emit({"card": ctx.key}), name="echo").sink(rh.io.Collect(), name="echo_out")
    keyed.join(tx.key_by("card"), between=("-2ms", "0ms"), name="pairs").sink(rh.io.Collect(), name="pairs_out")
    keyed.join(tx.key_by("card"), window=rh.tumbling("10ms"), name="together").sink(
        rh.io.Collect(), name="together_out"
    )
    keyed.join(tx.key_by("card").latest(), name="as_of").sink(rh.io.Collect(), name="as_of_out")
    tx.map(lambda r: r, name="same").sink(rh.io.Collect(), name="same_out")
    return flow


def test_explain_describes_every_step_from_its_spec():
    flow = _every_kind()
    text = flow.explain()
    for line in (
        "  source 'tx' time='ts' (per-record watermarks): Records(60 rows, batch_size=1000) max_delay=5ms",
        '  with_time \'retime\' <- other: col("at").alias("ts") max_delay=0ms',
        "  union 'both' <- select_1, pick",
        "  lookup_join 'owners' <- tx: on card how=inner (2 rows)",
        "  window 'per_card' <- positive: tumbling(10ms) by card: n=rh.count(), p50=rh.median('amount')",
        "  top_n 'best' <- per_card: 1 per window by n",
        "  top_n 'running' <- positive: 2 by amount per card",
        "  dedup 'once' <- positive: by card within=5ms",
        "  changes 'flips' <- positive: big by card",
        "  interval_join 'pairs' <- positive, tx: on card = card how=inner between=-2ms..0ms",
        "  temporal_join 'as_of' <- positive, tx: on card = card how=inner",
    ):
        assert line in text.splitlines(), f"{line!r} not in:\n{text}"
    plan = make_plan(flow.graph)
    kinds = {g.head.kind for g in plan.groups}
    assert {"match", "reduce", "process", "window_join", "map", "select", "with_columns"} <= kinds


def test_a_flow_of_every_kind_builds_and_runs():
    flow = _every_kind()
    flow.run()
    stats = flow.metrics()
    assert stats.records_in == 61
    assert stats.dead_letters == 0
    assert stats.records_out > 61
