"""The monitoring demo's flow, without a user interface: alerts, resolutions, determinism.

Runs use a manual clock, so a minute of event time takes a fraction of a second and nothing
depends on how fast the machine is.
"""

from __future__ import annotations

import threading
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest

import rheon as rh
from rheon.apps.hosts import DEFAULT_START_MS, Incident, Scenario
from rheon.apps.monitoring import Rule, advance, build_flow, initial_state, rule_checks
from rheon.time.clock import ManualClock

Row = dict[str, Any]


class SteppingClock(ManualClock):
    """A manual clock whose sleeps last at least ``step_s``: the generator then hands out
    batches of many readings instead of one at a time (faster, and another batching)."""

    def __init__(self, step_s: float = 0.25) -> None:
        super().__init__()
        self.step_s = step_s

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        super().sleep(max(seconds, self.step_s), wake)


def run(
    *, hosts: int, speed: float, seconds: float, seed: int = 7, clock: ManualClock | None = None
) -> tuple[list[Row], list[Row], rh.RunStats]:
    """Run the flow for ``seconds`` of (manual) wall-clock time: ``seconds * speed`` of event time."""
    windows, alerts = rh.io.Collect(), rh.io.Collect()
    flow = build_flow(hosts, speed, seed, 85.0, windows, alerts)
    flow.run(duration=f"{int(seconds * 1000)}ms", clock=clock or SteppingClock())
    stats = flow.metrics()
    assert stats is not None
    return windows.rows, alerts.rows, stats


def at_s(ms: int) -> float:
    return (ms - DEFAULT_START_MS) / 1000


def test_first_incident_alerts_then_resolves() -> None:
    scenario = Scenario(hosts=5, seed=7)
    first = scenario.incidents[0]
    assert first.kind == "cpu"
    assert first.start_s <= 3
    _, alerts, _ = run(hosts=5, speed=50, seconds=4)  # 200 s of event time
    mine = [r for r in alerts if (r["host"], r["metric"]) == (first.host, "cpu")]
    assert [r["event"] for r in mine[:2]] == ["alert", "resolved"]
    alert, resolved = mine[:2]
    # the 10 s average crosses the limit once the incident fills the window, and must stay above for 30 s
    assert first.start_s <= at_s(alert["started"]) <= first.start_s + 12
    assert alert["at"] - alert["started"] == 30_000
    assert alert["value"] > 85.0
    # it resolves once the 10 s average has dropped back, shortly after the incident ends
    assert resolved["started"] == alert["started"]
    assert first.end_s <= at_s(resolved["at"]) <= first.end_s + 12
    assert resolved["value"] <= 85.0


def test_healthy_hosts_never_alert() -> None:
    scenario = Scenario(hosts=5, seed=7)
    healthy = set(scenario.healthy_hosts())
    assert healthy
    windows, alerts, _ = run(hosts=5, speed=50, seconds=4)
    assert {r["host"] for r in windows} >= healthy  # they do report...
    assert not [r for r in alerts if r["host"] in healthy]  # ...and never alert
    assert all(r["host"] in {i.host for i in scenario.incidents} for r in alerts)


def test_every_incident_alerts_once_and_resolves_once() -> None:
    scenario = Scenario(hosts=20, seed=3)
    horizon_s = 600
    _, alerts, _ = run(hosts=20, speed=50, seconds=horizon_s / 50, seed=3)

    def incident_of(row: Row) -> Incident:
        (match,) = [
            i
            for i in scenario.incidents_of(row["host"])
            if i.kind == row["metric"] and i.start_s <= at_s(row["started"]) <= i.start_s + 12
        ]
        return match

    per_incident = Counter((incident_of(r), r["event"]) for r in alerts)  # every row belongs to an incident
    finished = [i for i in scenario.incidents if i.end_s + 20 < horizon_s]
    assert len(finished) >= 5
    for incident in finished:
        assert per_incident[(incident, "alert")] == 1, incident
        assert per_incident[(incident, "resolved")] == 1, incident
    for row in alerts:
        if row["event"] == "resolved":
            assert incident_of(row).end_s <= at_s(row["at"]) <= incident_of(row).end_s + 12
    assert max(per_incident.values()) == 1


def test_readings_are_never_late_and_windows_are_full() -> None:
    windows, _, stats = run(hosts=5, speed=50, seconds=2)
    assert stats.late_rows == 0
    assert stats.dead_letters == 0
    assert list(windows[0]) == ["host", "window_start", "window_end", "cpu", "mem", "err", "n"]
    settled = [r for r in windows if at_s(r["window_start"]) >= 2]
    assert settled
    # one reading per host per second; jitter moves a few across a window boundary
    assert all(8 <= r["n"] <= 12 for r in settled)
    assert all(r["window_end"] - r["window_start"] == 10_000 for r in windows)


def test_generator_follows_the_manual_clock() -> None:
    _, _, stats = run(hosts=5, speed=50, seconds=4)
    assert abs(stats.records_in - 5 * 50 * 4) <= 1


def test_same_output_whatever_the_batching() -> None:
    # one reading per batch (plain ManualClock) vs ~35 per batch (SteppingClock)
    _, fine, _ = run(hosts=3, speed=20, seconds=3, seed=1, clock=ManualClock())
    _, coarse, _ = run(hosts=3, speed=20, seconds=3, seed=1, clock=SteppingClock(0.6))
    assert fine
    assert fine == coarse


def test_scenario_is_deterministic_from_the_seed() -> None:
    a, b, c = Scenario(hosts=8, seed=11), Scenario(hosts=8, seed=11), Scenario(hosts=8, seed=12)
    assert a.incidents == b.incidents
    assert [a.reading(i) for i in range(200)] == [b.reading(i) for i in range(200)]
    assert [a.reading(i) for i in range(200)] != [c.reading(i) for i in range(200)]


def test_readings_are_out_of_order_but_within_max_delay() -> None:
    scenario = Scenario(hosts=10, seed=5)
    ts = [scenario.reading(i)["ts"] for i in range(5_000)]
    assert any(later < earlier for earlier, later in pairwise(ts))
    newest = ts[0]
    for t in ts:
        assert t > newest - 2_000
        newest = max(newest, t)


@pytest.mark.parametrize("threshold", [60.0, 85.0, 95.0])
def test_cpu_incidents_climb_above_the_threshold(threshold: float) -> None:
    scenario = Scenario(hosts=10, seed=2, threshold=threshold)
    for incident in scenario.incidents:
        if incident.kind == "cpu":
            assert threshold < incident.level <= 100.0


def test_incident_weight_ramps_up_and_down() -> None:
    incident = Incident("web-01", "cpu", start_s=10, duration_s=50, level=95.0)
    weights = [incident.weight(t) for t in (9, 10, 11, 30, 59, 60, 61, 62)]
    assert weights == [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]


# -- the alert state machine on its own ---------------------------------------------------------


def feed(values: list[float], *, limit: float = 85.0, hold_ms: int = 3_000) -> list[Row]:
    """Run checks (one per second) through initial_state + advance as the flow's reduce does."""
    checks = rule_checks([Rule("cpu", limit, hold_ms)])
    out: list[Row] = []
    state: Row | None = None
    for second, value in enumerate(values):
        (check,) = checks({"host": "h", "window_end": second * 1000, "cpu": value})
        row = initial_state(check)
        state = row if state is None else advance(state, row)
        out.append(state)
    return out


def test_alert_needs_the_whole_hold() -> None:
    states = feed([90, 90, 90, 80, 90, 90, 90, 90, 90])
    events = [(i, s["event"]) for i, s in enumerate(states) if s["event"]]
    # the dip at second 3 restarts the clock: above again from 4, alert 3 s later at 7
    assert events == [(7, "alert")]
    assert states[7]["started"] == 4_000


def test_resolution_when_back_at_or_below_the_limit() -> None:
    states = feed([90, 90, 90, 90, 86, 85, 95, 95])
    assert [(i, s["event"]) for i, s in enumerate(states) if s["event"]] == [(3, "alert"), (5, "resolved")]
    assert states[5]["status"] == "OK"
    assert states[5]["started"] == 0


def test_missing_averages_are_not_checked() -> None:
    checks = rule_checks([Rule("cpu", 85.0), Rule("err", 5.0)])
    rows = checks({"host": "h", "window_end": 1000, "cpu": None, "err": 7.5})
    assert [(r["metric"], r["breach"]) for r in rows] == [("err", True)]


def test_build_flow_rejects_a_non_positive_speed() -> None:
    with pytest.raises(rh.FlowError, match="speed must be a positive"):
        build_flow(speed=0)
