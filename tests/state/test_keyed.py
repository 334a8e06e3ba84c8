"""Keyed state of process functions: each named state keeps one kind."""

from __future__ import annotations

import pytest

import rheon as rh
from rheon.state.keyed import StateKindError, StateKinds


def test_kinds_from_a_checkpoint_are_kept_and_checked():
    kinds = StateKinds("process 'p'")
    kinds.restore({"seen": "list"})
    kinds.declare("seen", "list")
    kinds.declare("n", "value")
    assert kinds.snapshot() == {"seen": "list", "n": "value"}
    with pytest.raises(StateKindError, match=r"state 'seen' is list state in the checkpoint"):
        kinds.declare("seen", "map")


def test_one_name_used_as_two_kinds_stops_the_run_instead_of_dead_lettering():
    class Fn:
        def process(self, row, ctx):
            ctx.state("x", default=0).set(1)
            ctx.timers.register_event_time(row["ts"])

        def on_timer(self, timestamp, ctx):  # the timer path too: not a dead letter
            ctx.state.map("x").put("a", 1)

    flow = rh.Flow("kinds")
    flow.source(rh.io.Records([{"k": 1, "ts": 0}]), time="ts").key_by("k").process(Fn(), name="p").sink(rh.io.Collect())
    with pytest.raises(
        rh.FlowError,
        match=r"process 'p': state 'x' is used both as value state \(ctx\.state\('x'\)\) and as map state "
        r"\(ctx\.state\.map\('x'\)\)\. Give one of them another name\.",
    ):
        flow.run()
