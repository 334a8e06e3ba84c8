"""Consecutive expression steps run as one Polars query, and still fail step by step."""

from __future__ import annotations

import polars as pl
import pytest

import rheon as rh
from rheon.runtime.plan import make_plan


def _flow(rows, build, name="chain"):
    flow = rh.Flow(name)
    out, bad = rh.io.Collect(), rh.io.Collect()
    build(flow.source(rh.io.Records(rows, batch_size=100), time="ts")).sink(out)
    flow.dead_letters().sink(bad)
    return flow, out, bad


def test_filter_with_columns_and_select_fuse_into_one_operator():
    flow, _, _ = _flow(
        [{"ts": 0, "x": 1}],
        lambda s: (
            s.filter(rh.col("x") > 0, name="pos")
            .with_columns(y=rh.col("x") * 2)
            .select("ts", "y", name="keep")
            .map(lambda r: r, name="py")
        ),
    )
    labels = [group.label for group in make_plan(flow.graph).groups]
    assert "chain 'pos+with_columns_1+keep'" in labels
    assert "map 'py'" in labels  # a Python step does not join an expression chain


def test_fused_steps_give_the_same_rows_as_separate_ones():
    rows = [{"ts": i, "x": i % 7 - 3, "g": "ab"[i % 2]} for i in range(1_000)]

    def build(s):
        return (
            s.filter(rh.col("x") != 0, name="nonzero")
            .with_columns(y=100 / rh.col("x"))
            .filter(rh.col("g") == "a", name="only_a")
            .select("ts", "y", name="out")
        )

    flow, out, _ = _flow(rows, build)
    flow.run()
    expected = (
        pl.DataFrame(rows)
        .filter(pl.col("x") != 0)
        .with_columns(y=100 / pl.col("x"))
        .filter(pl.col("g") == "a")
        .select("ts", "y")
    )
    assert out.rows == expected.to_dicts()


def test_a_missing_column_names_the_step_that_reads_it():
    flow, _, _ = _flow(
        [{"ts": 0, "x": 1}],
        lambda s: (
            s.map(lambda r: {"ts": r["ts"], "z": 1}, name="py")
            .filter(rh.col("ts") >= 0, name="ok")
            .with_columns(y=rh.col("x") + 1)
        ),
    )
    with pytest.raises(rh.FlowError, match=r"with_columns 'with_columns_1': .*x.*\(columns: ts, z\)"):
        flow.run()


def test_rows_a_step_fails_on_go_to_the_dead_letters_naming_that_step():
    """A strict cast fails the whole batch in Polars; redone row by row, the rows it fails on
    are dead letters of the cast step, the others go on through every step."""
    rows = [{"ts": i, "s": ["1", "x", "3", "-4"][i]} for i in range(4)]
    flow, out, bad = _flow(
        rows,
        lambda s: (
            s.filter(rh.col("ts") >= 0, name="all")
            .with_columns(n=rh.col("s").cast(pl.Int64, strict=True))
            .filter(rh.col("n") > 0, name="positive")
        ),
    )
    flow.run()
    assert [r["n"] for r in out.rows] == [1, 3]
    assert [(r["operator"], '"x"' in r["payload"]) for r in bad.rows] == [("with_columns 'with_columns_1'", True)]
    assert "InvalidOperationError" in bad.rows[0]["reason"]
