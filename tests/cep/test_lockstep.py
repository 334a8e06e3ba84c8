"""The lock-step path (``rheon.cep.lockstep``) against the row matcher it stands in for.

Patterns of single-row ``next`` steps with a Python condition run in lock step; the same flow
with the path switched off runs them row by row. Both must give the same matches (every field,
in the same order), the same dead letters (conditions that raise, in the same order), and the
same conditions called on the same rows, at every ``after_match``, batch size (so matches span
batches and open attempts go through the key's state) and with the long keys handed to the row
matcher at every position or never. A crash-and-restore run must match an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon import cep
from rheon.cep import lockstep
from rheon.cep import operator as cep_operator
from rheon.cep.nfa import compile_pattern
from tests.crash import Crash, crash_at_row

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SKIPS = ["skip_past_last_event", "skip_to_next", "no_skip", "skip_to_first:s1", "skip_to_last:s1", "skip_to_last:s0"]
NAMES = ["s0", "s1", "s2", "s3"]


def make_condition(kind: str, step: int, calls: Counter[tuple[Any, ...]] | None) -> Any:
    """A condition for step ``step`` (kinds: any, expression, rising, raising, parity)."""
    if kind == "any":
        return None
    if kind == "expr":
        return rh.col("v") % 3 != step % 3

    def fn(e: dict[str, Any], m: Any) -> bool:
        if calls is not None:
            calls[(step, e["id"], tuple(tuple(r["id"] for r in m[s]) for s in m))] += 1
        if kind == "raising" and e["v"] == 7:
            msg = f"no 7 at step {step}"
            raise ValueError(msg)
        if step == 0 or kind == "parity":
            return bool(e["v"] % 2 == step % 2)
        return bool(e["v"] >= m[NAMES[step - 1]][-1]["v"])

    return fn


def build(kinds: list[str], calls: Counter[tuple[Any, ...]] | None = None) -> Any:
    pattern = cep.begin(NAMES[0], make_condition(kinds[0], 0, calls))
    for i, kind in enumerate(kinds[1:], 1):
        pattern = pattern.next(NAMES[i], make_condition(kind, i, calls))
    return pattern


def run(rows: list[dict[str, Any]], kinds: list[str], after_match: str, batch_size: int, *, fast: bool) -> Any:
    calls: Counter[tuple[Any, ...]] = Counter()
    pattern = build(kinds, calls)
    flow = rh.Flow("lockstep")
    out, dead = rh.io.Collect(), rh.io.Collect()
    source = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="2ms")
    source.key_by("k").match(pattern, after_match=after_match).sink(out)
    flow.dead_letters().sink(dead)
    with pytest.MonkeyPatch.context() as mp:
        if not fast:
            mp.setattr(cep_operator, "eligible", lambda *_: False)
        flow.run()
    return out.rows, [(d["reason"], d["payload"]) for d in dead.rows], calls


@st.composite
def logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 60))
    keys = draw(st.integers(1, 6))
    rows = []
    t = 0
    for i in range(n):
        t += draw(st.sampled_from([0, 1, 1, 2]))
        delay = draw(st.integers(0, 2))
        rows.append({"k": draw(st.integers(0, keys - 1)), "id": i, "v": draw(st.integers(0, 9)), "ts": t + delay})
    return rows


KINDS = st.sampled_from(["any", "expr", "rising", "raising", "parity"])


@SETTINGS
@given(
    rows=logs(),
    kinds=st.lists(KINDS, min_size=1, max_size=4).filter(lambda ks: any(k not in ("expr",) for k in ks)),
    after_match=st.sampled_from(SKIPS),
    batch_size=st.sampled_from([1, 3, 7, 1000]),
    min_keys=st.sampled_from([1, 2, 10**9]),
)
def test_lock_step_gives_what_the_row_matcher_gives(
    rows: list[dict[str, Any]], kinds: list[str], after_match: str, batch_size: int, min_keys: int
) -> None:
    if after_match.partition(":")[2] not in ("", *NAMES[: len(kinds)]):
        after_match = "skip_past_last_event"
    assert lockstep.eligible(compile_pattern(build(kinds)), "past_last")
    expected = run(rows, kinds, after_match, batch_size, fast=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lockstep, "MIN_KEYS", min_keys)
        got = run(rows, kinds, after_match, batch_size, fast=True)
    assert got[0] == expected[0], "matches"
    assert got[1] == expected[1], "dead letters"
    assert got[2] == expected[2], "condition calls"


def test_a_rising_three_over_many_keys_spans_batches_like_the_row_matcher() -> None:
    rng = random.Random(3)
    rows = [{"k": rng.randrange(97), "id": i, "v": rng.randrange(13), "ts": i} for i in range(5000)]
    kinds = ["any", "rising", "rising"]
    for after_match in SKIPS[:4]:
        expected = run(rows, kinds, after_match, 613, fast=False)
        got = run(rows, kinds, after_match, 613, fast=True)
        assert expected[0]
        assert got == expected


def test_only_single_row_strict_patterns_with_a_python_condition_run_in_lock_step() -> None:
    rising = build(["any", "rising"])
    assert lockstep.eligible(compile_pattern(rising), "past_last")
    assert not lockstep.eligible(compile_pattern(build(["expr", "expr"])), "past_last")
    assert not lockstep.eligible(compile_pattern(rising.within("1s")), "past_last")
    assert not lockstep.eligible(compile_pattern(build(["any"]).next("x").times(2)), "past_last")
    assert not lockstep.eligible(compile_pattern(build(["any"]).followed_by("x", lambda e, m: True)), "past_last")
    assert not lockstep.eligible(compile_pattern(build(["any"]).not_next("x", lambda e, m: True)), "past_last")


def _checkpointed(rows: list[dict[str, Any]], out_dir: Path, ckpt: Path, crash_after: int | None) -> None:
    flow = rh.Flow("lockstep-recover")
    src = flow.source(rh.io.Records(rows, batch_size=50), time="ts", max_delay="3ms", name="tx")
    m = src.key_by("k").match(build(["any", "rising", "rising"]), name="rising")
    m.select("k", "match_start", "match_end").sink(rh.io.FileSink(out_dir / "matches"), name="out")
    src.sink(crash_at_row(crash_after), name="watch")
    with contextlib.suppress(Crash):
        flow.run(checkpoint_dir=ckpt, checkpoint_every="0s")


def _read(out_dir: Path) -> list[tuple[Any, ...]]:
    files = sorted((out_dir / "matches").glob("part-*.jsonl"))
    return sorted(pl.concat([pl.read_ndjson(f) for f in files]).rows()) if files else []


def test_a_run_restarted_from_its_checkpoints_matches_like_an_uninterrupted_one(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = [{"k": rng.randrange(5), "id": i, "v": rng.randrange(11), "ts": i} for i in range(600)]
    _checkpointed(rows, tmp_path / "straight", tmp_path / "ck0", None)
    expected = _read(tmp_path / "straight")
    assert expected
    ckpt = tmp_path / "ck1"
    for crash_after in (77, 203, 451, None):
        _checkpointed(rows, tmp_path / "crashed", ckpt, crash_after)
    assert _read(tmp_path / "crashed") == expected
