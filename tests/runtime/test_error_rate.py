"""A function that fails on (nearly) every record stops the run, with its traceback."""

from __future__ import annotations

import pytest

import rheon as rh

ROWS = [{"card": f"c{i % 9}", "amount": i} for i in range(2_000)]


def _flow(fn, **kwargs) -> tuple[rh.Flow, rh.io.Collect]:
    flow = rh.Flow("typo", **kwargs)
    out = rh.io.Collect()
    flow.source(rh.io.Records(ROWS, batch_size=50)).map(fn, name="enrich").sink(out)
    return flow, out


def test_a_typo_that_fails_every_record_stops_the_run_with_the_first_traceback():
    flow, out = _flow(lambda r: {**r, "usd": r["amonut"] * 1.1})
    with pytest.raises(rh.RecordError) as caught:
        flow.run()
    message = str(caught.value)
    assert message.startswith("map 'enrich': 100 of its last 100 records failed, more than max_error_rate=0.5 allows")
    assert 'the first: KeyError: \'amonut\' (record: {"card": "c0", "amount": 0})' in message
    assert isinstance(caught.value.__cause__, KeyError)
    assert caught.value.__cause__.__traceback__ is not None
    assert flow.metrics().dead_letters == 100  # stopped after two batches, not 2,000 records later
    assert out.rows == []


def test_the_limit_can_be_turned_off():
    flow, _ = _flow(lambda r: {**r, "usd": r["amonut"] * 1.1}, max_error_rate=None)
    flow.run()
    assert flow.metrics().dead_letters == 2_000


def test_a_minority_of_failures_goes_to_the_dead_letters_and_the_run_goes_on():
    flow, out = _flow(lambda r: {**r, "inverse": 1 / (r["amount"] % 10)})  # 10 % fail
    flow.run()
    assert flow.metrics().dead_letters == 200
    assert len(out.rows) == 1_800


def test_failures_in_bursts_are_judged_over_the_last_records():
    # Fine for 1,000 records, then every record fails: caught once the failures are more than
    # half of the last 1,000 records, at about record 1,500 (batches of 50).
    flow, _ = _flow(lambda r: {**r, "x": 1 // (0 if r["amount"] >= 1_000 else 1)})
    with pytest.raises(rh.RecordError, match=r"map 'enrich': .* failed, more than max_error_rate=0\.5"):
        flow.run()
    assert 1_500 <= flow.metrics().records_in <= 1_600


def test_process_functions_count_too():
    flow = rh.Flow("proc")

    def broken(record, ctx):
        raise ValueError("boom")

    flow.source(rh.io.Records(ROWS, batch_size=100)).key_by("card").process(broken, name="p").sink(rh.io.Collect())
    with pytest.raises(rh.RecordError, match=r"process 'p': .* records failed") as caught:
        flow.run()
    assert isinstance(caught.value.__cause__, ValueError)


def test_undecodable_input_does_not_count(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_text("not json\n" * 300 + '{"x": 1}\n')
    flow = rh.Flow("junk")
    out = rh.io.Collect()
    flow.source(rh.io.JsonLines(path)).sink(out)
    flow.run()
    assert flow.metrics().dead_letters == 300
    assert out.rows == [{"x": 1}]


@pytest.mark.parametrize("bad", [1.0, -0.1, "half", True])
def test_max_error_rate_is_checked(bad):
    with pytest.raises(rh.FlowError, match="max_error_rate must be a share from 0 up to"):
        rh.Flow("x", max_error_rate=bad)
