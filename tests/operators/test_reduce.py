"""Keyed running reduce."""

from __future__ import annotations

import rheon as rh
from rheon.testing import collect


def test_running_totals_per_composite_key(batch_size):
    rows = [{"a": i % 2, "b": i % 3, "v": i} for i in range(12)]
    flow = rh.Flow("r")
    out = collect(
        flow.source(rh.io.Records(rows, batch_size=batch_size))
        .key_by("a", "b")
        .reduce(lambda acc, r: {**r, "v": acc["v"] + r["v"], "n": acc.get("n", 1) + 1})
    )
    flow.run()
    state: dict = {}
    expected = []
    for r in rows:
        k = (r["a"], r["b"])
        if k in state:
            state[k] = {**r, "v": state[k]["v"] + r["v"], "n": state[k].get("n", 1) + 1}
        else:
            state[k] = dict(r)
        expected.append({"a": r["a"], "b": r["b"], "v": state[k]["v"], "n": state[k].get("n")})
    assert out.rows == expected


def test_acc_mutated_in_place_does_not_rewrite_earlier_output():
    def add(acc, r):
        acc["v"] += r["v"]
        return acc

    flow = rh.Flow("mut")
    out = collect(flow.source(rh.io.Records([{"k": 1, "v": 1}] * 3)).key_by("k").reduce(add))
    flow.run()
    assert [r["v"] for r in out.rows] == [1, 2, 3]


def test_failing_reduce_leaves_state_and_dead_letters_the_record():
    rows = [{"k": "a", "v": 1}, {"k": "a", "v": None}, {"k": "a", "v": 2}]
    flow = rh.Flow("bad")
    out = collect(
        flow.source(rh.io.Records(rows)).key_by("k").reduce(lambda acc, r: {**r, "v": acc["v"] + r["v"]}, name="sum")
    )
    bad = collect(flow.dead_letters())
    flow.run()
    assert [r["v"] for r in out.rows] == [1, 3]
    assert bad.rows == [
        {
            "operator": "reduce 'sum'",
            "reason": "TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'",
            "payload": '{"k": "a", "v": null}',
        }
    ]
