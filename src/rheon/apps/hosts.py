"""Synthetic host metrics for the monitoring demo: hosts, their normal load, their incidents.

Every host sends one reading (``cpu`` %, ``mem`` %, ``error_rate`` %) per *virtual* second, with
a little out-of-order jitter. Some hosts have incidents: cpu or error rate above its limit for
45-120 virtual seconds, then back to normal; one starts within the first seconds so that an
alert shows up quickly. Everything follows from the seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_START_MS", "Incident", "Scenario", "host_names"]

Row = dict[str, Any]

DEFAULT_START_MS = 1_767_225_600_000
"""Event time of virtual second 0: 2026-01-01T00:00:00Z (any value works; runs are relative)."""

_ROLES = ("web", "api", "db", "cache", "queue")
_RAMP_S = 2


def host_names(n: int) -> list[str]:
    """Names for ``n`` hosts: roles in turn, numbered per role.

    Examples
    --------
    >>> host_names(7)
    ['web-01', 'api-01', 'db-01', 'cache-01', 'queue-01', 'web-02', 'api-02']
    """
    return [f"{_ROLES[i % len(_ROLES)]}-{i // len(_ROLES) + 1:02d}" for i in range(n)]


@dataclass(frozen=True)
class Incident:
    """A stretch of virtual time during which one metric of one host is abnormally high.

    ``kind`` is ``"cpu"`` or ``"err"``; ``level`` is the value (%) the metric climbs to.

    Examples
    --------
    >>> Incident("web-01", "cpu", start_s=2, duration_s=60, level=93.0).end_s
    62
    """

    host: str
    kind: str
    start_s: int
    duration_s: int
    level: float

    @property
    def end_s(self) -> int:
        """The virtual second at which the metric starts to recover."""
        return self.start_s + self.duration_s

    def weight(self, t: float) -> float:
        """How far (0..1) the incident has pushed the metric at virtual second ``t``."""
        if t < self.start_s or t >= self.end_s + _RAMP_S:
            return 0.0
        if t < self.start_s + _RAMP_S:
            return (t - self.start_s + 1) / _RAMP_S
        if t < self.end_s:
            return 1.0
        return max(0.0, 1 - (t - self.end_s + 1) / _RAMP_S)


@dataclass(frozen=True)
class _Profile:
    """A host's normal behaviour."""

    cpu: float
    cpu_swing: float
    period_s: float
    phase: float
    mem: float
    err: float


class Scenario:
    """The synthetic world of the demo: hosts, their normal load and their incidents.

    ``reading(i)`` is the generator function: reading ``i`` is host ``i % hosts`` at virtual
    second ``i // hosts``; its ``ts`` is ``start_ms`` plus that second plus up to a second of
    jitter (a few readings are also a little delayed), so events arrive slightly out of order
    but never more than 2 s behind the newest one. The same seed gives the same readings.

    Parameters
    ----------
    hosts
        Number of hosts.
    seed
        Seed of everything random.
    threshold
        The cpu limit (%) the demo alerts on; cpu incidents climb a few points above it.
    err_threshold
        The error-rate limit (%); error incidents climb above it.
    start_ms
        Event time (epoch ms) of virtual second 0.
    horizon_s
        Incidents are planned up to this virtual second.

    Examples
    --------
    >>> s = Scenario(hosts=4, seed=1)
    >>> first = s.incidents[0]
    >>> first.kind, first.start_s <= 3
    ('cpu', True)
    >>> r = s.reading(0)
    >>> sorted(r), r["host"], 0 <= r["ts"] - DEFAULT_START_MS < 1000
    (['cpu', 'error_rate', 'host', 'mem', 'ts'], 'web-01', True)
    >>> s.reading(5) == Scenario(hosts=4, seed=1).reading(5)
    True
    """

    def __init__(
        self,
        hosts: int = 20,
        *,
        seed: int = 7,
        threshold: float = 85.0,
        err_threshold: float = 5.0,
        start_ms: int = DEFAULT_START_MS,
        horizon_s: int = 86_400,
    ) -> None:
        if hosts < 1:
            msg = f"Scenario: hosts must be at least 1 (got {hosts!r})"
            raise ValueError(msg)
        self.hosts = host_names(hosts)
        self.seed = seed
        self.threshold = threshold
        self.err_threshold = err_threshold
        self.start_ms = start_ms
        rng = random.Random(seed)
        self._profiles = [
            _Profile(
                cpu=rng.uniform(15, 50),
                cpu_swing=rng.uniform(3, 12),
                period_s=rng.uniform(60, 300),
                phase=rng.uniform(0, 2 * math.pi),
                mem=rng.uniform(30, 70),
                err=rng.uniform(0.1, 1.2),
            )
            for _ in self.hosts
        ]
        self.incidents = self._plan_incidents(rng, horizon_s)
        self._by_host: dict[str, list[Incident]] = {h: [] for h in self.hosts}
        for incident in self.incidents:
            self._by_host[incident.host].append(incident)

    def __repr__(self) -> str:
        return f"Scenario(hosts={len(self.hosts)}, seed={self.seed}, incidents={len(self.incidents)})"

    def _level(self, rng: random.Random, kind: str) -> float:
        if kind == "cpu":
            return min(100.0, self.threshold + rng.uniform(5, 12))
        return self.err_threshold + rng.uniform(4, 15)

    def _plan_incidents(self, rng: random.Random, horizon_s: int) -> list[Incident]:
        flaky = rng.sample(range(len(self.hosts)), k=max(1, round(len(self.hosts) / 4)))
        out: list[Incident] = []
        for n, h in enumerate(flaky):
            t = rng.randint(1, 3) if n == 0 else rng.randint(15, 200)
            first = n == 0
            while t < horizon_s:
                kind = "cpu" if first or rng.random() < 0.7 else "err"
                duration = rng.randint(45, 120)
                out.append(Incident(self.hosts[h], kind, t, duration, self._level(rng, kind)))
                t += duration + _RAMP_S + rng.randint(90, 400)
                first = False
        out.sort(key=lambda inc: (inc.start_s, inc.host))
        return out

    def incidents_of(self, host: str) -> list[Incident]:
        """The incidents planned for ``host``, in time order."""
        return list(self._by_host[host])

    def healthy_hosts(self) -> list[str]:
        """Hosts that never have an incident.

        Examples
        --------
        >>> s = Scenario(hosts=8, seed=3)
        >>> set(s.healthy_hosts()).isdisjoint(i.host for i in s.incidents)
        True
        """
        return [h for h in self.hosts if not self._by_host[h]]

    def reading(self, i: int) -> Row:
        """Reading number ``i``: one host at one virtual second (the :class:`~rheon.io.Generator` function)."""
        n = len(self.hosts)
        h, second = i % n, i // n
        host = self.hosts[h]
        p = self._profiles[h]
        rng = random.Random(self.seed * 1_000_003 + i)
        cpu = p.cpu + p.cpu_swing * math.sin(2 * math.pi * second / p.period_s + p.phase) + rng.gauss(0, 2.5)
        mem = p.mem + 4 * math.sin(2 * math.pi * second / 900 + p.phase) + rng.gauss(0, 1.0)
        err = p.err + abs(rng.gauss(0, 0.3))
        for incident in self._by_host[host]:
            if incident.start_s > second:
                break
            w = incident.weight(second)
            if w == 0.0:
                continue
            if incident.kind == "cpu":
                cpu = (1 - w) * cpu + w * (incident.level + rng.gauss(0, 1.5))
                mem += 12 * w
                err += 1.5 * w
            else:
                err = (1 - w) * err + w * (incident.level + rng.gauss(0, 1.0))
        offset_ms = rng.randrange(1000)
        if rng.random() < 0.03:
            offset_ms -= rng.randrange(200, 900)  # a delayed reading: out of order, within max_delay
        return {
            "host": host,
            "ts": self.start_ms + second * 1000 + offset_ms,
            "cpu": round(min(max(cpu, 0.0), 100.0), 2),
            "mem": round(min(max(mem, 0.0), 100.0), 2),
            "error_rate": round(max(err, 0.0), 3),
        }
