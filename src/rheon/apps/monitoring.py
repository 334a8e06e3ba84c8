"""Monitoring and alerting demo: sliding-window averages of host metrics and threshold alerts.

The readings come from :class:`~rheon.apps.hosts.Scenario` (synthetic hosts whose virtual
clock runs ``speed`` times faster than the wall clock). :func:`build_flow` wires the pipeline::

    Generator --key_by(host)--> sliding 10 s every 1 s: mean cpu, mem, err, count --> on_window
                                   |
                                   flat_map: one row per (host, metric rule)
                                   map: initial alert state
                                   key_by(host, metric).reduce(advance): the alert state machine
                                   filter(event != ""): alert / resolved rows --> on_alert

A rule alerts when its 10 s average stays above the limit for ``hold`` (30 s of event time)
and resolves when the average falls back to the limit or below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rheon as rh
from rheon.apps.hosts import DEFAULT_START_MS, Incident, Scenario, host_names
from rheon.core.durations import Duration, to_ms
from rheon.io.base import Sink

__all__ = [
    "DEFAULT_START_MS",
    "Incident",
    "Rule",
    "Scenario",
    "advance",
    "build_flow",
    "host_names",
    "initial_state",
    "rule_checks",
]

Row = dict[str, Any]
Output = Sink | Callable[[Row], object] | None


# -- the alert state machine ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Alert when window column ``metric`` stays above ``limit`` for ``hold_ms``.

    Examples
    --------
    >>> Rule("cpu", 85.0)
    Rule(metric='cpu', limit=85.0, hold_ms=30000)
    """

    metric: str
    limit: float
    hold_ms: int = 30_000


def rule_checks(rules: Sequence[Rule]) -> Callable[[Row], list[Row]]:
    """The ``flat_map`` function: one check row per rule for each window result.

    A check row has ``host``, ``metric``, ``value`` (the window's average), ``limit``,
    ``hold_ms``, ``at`` (the window's end, epoch ms) and ``breach`` (value above limit).

    Examples
    --------
    >>> checks = rule_checks([Rule("cpu", 85.0), Rule("err", 5.0)])
    >>> for row in checks({"host": "db-01", "window_end": 10_000, "cpu": 91.5, "err": 0.5}):
    ...     print(row)
    {'host': 'db-01', 'metric': 'cpu', 'value': 91.5, 'limit': 85.0, 'hold_ms': 30000, 'at': 10000, 'breach': True}
    {'host': 'db-01', 'metric': 'err', 'value': 0.5, 'limit': 5.0, 'hold_ms': 30000, 'at': 10000, 'breach': False}
    """
    rules = tuple(rules)

    def checks(row: Row) -> list[Row]:
        out: list[Row] = []
        for rule in rules:
            value = row[rule.metric]
            if value is None:
                continue
            out.append(
                {
                    "host": row["host"],
                    "metric": rule.metric,
                    "value": float(value),
                    "limit": float(rule.limit),
                    "hold_ms": rule.hold_ms,
                    "at": row["window_end"],
                    "breach": value > rule.limit,
                }
            )
        return out

    return checks


def initial_state(check: Row) -> Row:
    """Add the alert-state fields to a check row (the ``map`` before the ``reduce``).

    ``reduce`` emits the first record of a key as it is, so every record carries a complete
    initial state: ``status`` ``"OK"``, ``above_since`` (start of the current breach, or -1),
    ``started`` (start of the current alert, or -1) and ``event`` ``""`` (nothing happened).

    Examples
    --------
    >>> initial_state({"host": "a", "metric": "cpu", "value": 90.0, "limit": 85.0, "hold_ms": 30000,
    ...                "at": 5000, "breach": True})["above_since"]
    5000
    """
    return {
        **check,
        "status": "OK",
        "above_since": check["at"] if check["breach"] else -1,
        "started": -1,
        "event": "",
    }


def advance(state: Row, check: Row) -> Row:
    """The ``reduce`` function: move one (host, metric) alert state on by one check.

    ``event`` of the result is ``"alert"`` when the value has been above the limit for
    ``hold_ms``, ``"resolved"`` when an alert's value is back at or below the limit, else ``""``.

    Examples
    --------
    >>> def check(at, value):
    ...     return initial_state({"host": "a", "metric": "cpu", "value": value, "limit": 85.0,
    ...                           "hold_ms": 2000, "at": at, "breach": value > 85.0})
    >>> state = check(0, 90.0)
    >>> for at, value in [(1000, 91.0), (2000, 92.0), (3000, 93.0), (4000, 60.0)]:
    ...     state = advance(state, check(at, value))
    ...     print(at, state["status"], repr(state["event"]), state["started"])
    1000 OK '' -1
    2000 ALERT 'alert' 0
    3000 ALERT '' 0
    4000 OK 'resolved' 0
    """
    at = check["at"]
    above_since = -1
    if check["breach"]:
        above_since = state["above_since"] if state["above_since"] >= 0 else at
    status, started, event = state["status"], state["started"], ""
    if status == "OK" and above_since >= 0 and at - above_since >= check["hold_ms"]:
        status, started, event = "ALERT", above_since, "alert"
    elif status == "ALERT" and not check["breach"]:
        status, event = "OK", "resolved"
    return {**check, "status": status, "above_since": above_since, "started": started, "event": event}


# -- the flow ------------------------------------------------------------------------------------


def build_flow(
    hosts: int = 20,
    speed: float = 5.0,
    seed: int = 7,
    threshold: float = 85.0,
    on_window: Output = None,
    on_alert: Output = None,
    *,
    err_threshold: float = 5.0,
    hold: Duration = "30s",
    start_ms: int = DEFAULT_START_MS,
) -> rh.Flow:
    """Build the monitoring flow: readings → 10 s sliding averages → alerts.

    Parameters
    ----------
    hosts, seed, threshold, err_threshold, start_ms
        The :class:`Scenario`: how many hosts, which incidents, the cpu and error-rate limits
        (%), the event time of virtual second 0.
    speed
        Virtual seconds per wall-clock second: readings come at ``hosts * speed`` per second.
    on_window
        Sink (or function of a row) for every window result: ``host``, ``window_start``,
        ``window_end``, ``cpu``, ``mem``, ``err`` (10 s averages), ``n`` (readings).
    on_alert
        Sink (or function of a row) for alert transitions: ``host``, ``metric`` (``"cpu"`` or
        ``"err"``), ``event`` (``"alert"`` or ``"resolved"``), ``value`` (the 10 s average),
        ``limit``, ``started`` (epoch ms the breach began) and ``at`` (epoch ms of the event).
    hold
        How long (event time) an average must stay above its limit before it alerts.

    Examples
    --------
    >>> from rheon.time.clock import ManualClock
    >>> alerts = rh.io.Collect()
    >>> flow = build_flow(hosts=3, speed=20, seed=1, on_alert=alerts)
    >>> flow.run(duration="3s", clock=ManualClock())  # 60 virtual seconds, instantly
    >>> [(r["host"], r["metric"], r["event"], (r["at"] - r["started"]) // 1000) for r in alerts.rows]
    [('api-01', 'cpu', 'alert', 30), ('api-01', 'cpu', 'resolved', 39)]
    """
    if not speed > 0:
        msg = f"build_flow: speed must be a positive number of virtual seconds per second (got {speed!r})"
        raise rh.FlowError(msg)
    scenario = Scenario(hosts, seed=seed, threshold=threshold, err_threshold=err_threshold, start_ms=start_ms)
    hold_ms = to_ms(hold, what="build_flow: hold")
    rules = [Rule("cpu", threshold, hold_ms), Rule("err", err_threshold, hold_ms)]

    flow = rh.Flow("monitoring")
    readings = flow.source(
        rh.io.Generator(scenario.reading, rate=hosts * speed), time="ts", max_delay="2s", name="readings"
    )
    averages = (
        readings.key_by("host")
        .window(rh.sliding("10s", every="1s"), name="avg_10s")
        .agg(cpu=rh.mean("cpu"), mem=rh.mean("mem"), err=rh.mean("error_rate"), n=rh.count())
    )
    if on_window is not None:
        averages.sink(on_window, name="windows")
    alerts = (
        averages.flat_map(rule_checks(rules), name="checks")
        .map(initial_state, name="initial_state")
        .key_by("host", "metric")
        .reduce(advance, name="alert_state")
        .filter(rh.col("event") != "", name="transitions")
        .select("host", "metric", "event", "value", "limit", "started", "at", name="alerts")
    )
    if on_alert is not None:
        alerts.sink(on_alert, name="alert_sink")
    return flow
