"""Fraud and alerting rules as CEP patterns over two hours of synthetic events.

Five rules, each a pattern run per key with ``stream.key_by(k).match(pattern)`` (see docs/cep.md):

1. a small charge then a big one on the same card, within 10 minutes;
2. three or more failed logins then a success, within 5 minutes;
3. a login from a new device, then a password change, then a transfer over $1,000, within 30 minutes;
4. CPU above 90% for 3 consecutive one-minute windows (a pattern over window results);
5. an order with no payment within 15 minutes.

The data is random background traffic (seeded, so every run prints the same) plus planted cases,
each next to a near miss that must not raise an alert. Events arrive up to 20 s out of order.

Run: python examples/fraud_patterns.py
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rheon as rh
from rheon import cep

T0 = 1_714_521_600_000  # 2024-05-01 00:00 UTC, epoch ms
MIN = 60_000
HOURS = 2
Row = dict[str, Any]


def at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def arrival_order(rows: list[Row], rng: random.Random) -> list[Row]:
    """The rows as a source would deliver them: each up to 20 s late, so out of time order."""
    return sorted(rows, key=lambda r: r["ts"] + rng.randrange(20_000))


# -- data ------------------------------------------------------------------------------------


def card_payments(rng: random.Random) -> list[Row]:
    rows = []
    for _ in range(3_000):
        amount = round(rng.lognormvariate(3.5, 1.0), 2)  # mostly 10-100, rarely > 500
        rows.append(
            {"card": f"c-{rng.randrange(400):04d}", "amount": amount, "ts": T0 + rng.randrange(HOURS * 60 * MIN)}
        )
    t = T0 + 20 * MIN
    rows += [  # planted: a $0.50 probe, then $899 three minutes later
        {"card": "c-9001", "amount": 0.50, "ts": t},
        {"card": "c-9001", "amount": 899.00, "ts": t + 3 * MIN},
    ]
    rows += [  # near miss: the big charge comes 12 minutes later
        {"card": "c-9002", "amount": 0.99, "ts": t},
        {"card": "c-9002", "amount": 1_250.00, "ts": t + 12 * MIN},
    ]
    rows += [  # near miss: a coffee between the probe and the big charge
        {"card": "c-9003", "amount": 0.10, "ts": t},
        {"card": "c-9003", "amount": 4.20, "ts": t + MIN},
        {"card": "c-9003", "amount": 640.00, "ts": t + 2 * MIN},
    ]
    return rows


def logins(rng: random.Random) -> list[Row]:
    rows = []
    for _ in range(2_000):
        user = f"u-{rng.randrange(300):04d}"
        rows.append({"user": user, "ok": rng.random() > 0.1, "ts": T0 + rng.randrange(HOURS * 60 * MIN)})
    t = T0 + 45 * MIN
    # planted: four wrong passwords in 40 s, then a success
    rows += [{"user": "u-9001", "ok": False, "ts": t + i * 10_000} for i in range(4)]
    rows.append({"user": "u-9001", "ok": True, "ts": t + 40_000})
    # near miss: two failures, then a success
    rows += [{"user": "u-9002", "ok": ok, "ts": t + i * 10_000} for i, ok in enumerate([False, False, True])]
    return rows


def account_events(rng: random.Random) -> list[Row]:
    rows: list[Row] = []

    def event(user: str, kind: str, ts: int, new_device: bool = False, amount: float = 0.0) -> None:
        rows.append({"user": user, "type": kind, "new_device": new_device, "amount": amount, "ts": ts})

    for _ in range(1_500):
        user, ts = f"u-{rng.randrange(300):04d}", T0 + rng.randrange(HOURS * 60 * MIN)
        kind = rng.choices(["login", "transfer", "password_change"], weights=[50, 45, 1])[0]
        amount = round(rng.uniform(10, 900), 2) if kind == "transfer" else 0.0
        event(user, kind, ts, new_device=kind == "login" and rng.random() < 0.02, amount=amount)
    t = T0 + 70 * MIN
    # planted: account takeover, all within 25 minutes (a small transfer in between is skipped)
    event("u-9003", "login", t, new_device=True)
    event("u-9003", "transfer", t + 4 * MIN, amount=50.0)
    event("u-9003", "password_change", t + 9 * MIN)
    event("u-9003", "transfer", t + 25 * MIN, amount=4_800.0)
    # near miss: the same chain, but the big transfer comes 45 minutes after the login
    event("u-9004", "login", t, new_device=True)
    event("u-9004", "password_change", t + 10 * MIN)
    event("u-9004", "transfer", t + 45 * MIN, amount=2_000.0)
    return rows


def cpu_metrics(rng: random.Random) -> list[Row]:
    rows = []
    for i in range(HOURS * 60 * 6):  # every 10 s
        ts = T0 + i * 10_000
        for h in range(12):
            host = f"web-{h:02d}"
            cpu = rng.uniform(20, 75)
            minute = i // 6
            if host == "web-07" and 30 <= minute < 34:  # planted: four hot minutes
                cpu = rng.uniform(92, 99)
            if host == "web-03" and 50 <= minute < 52:  # near miss: only two hot minutes
                cpu = rng.uniform(92, 99)
            rows.append({"host": host, "cpu": round(cpu, 1), "ts": ts})
    return rows


def orders(rng: random.Random) -> list[Row]:
    rows = []
    for i in range(400):
        order_id, ts = f"o-{i:04d}", T0 + rng.randrange((HOURS - 1) * 60 * MIN)
        rows.append({"order_id": order_id, "type": "order", "ts": ts})
        if rng.random() > 0.01:  # almost every order is paid within 10 minutes
            rows.append({"order_id": order_id, "type": "payment", "ts": ts + rng.randrange(10 * MIN)})
    t = T0 + 30 * MIN
    rows.append({"order_id": "o-9001", "type": "order", "ts": t})  # planted: never paid
    rows.append({"order_id": "o-9002", "type": "order", "ts": t})  # planted: paid after 20 minutes
    rows.append({"order_id": "o-9002", "type": "payment", "ts": t + 20 * MIN})
    rows.append({"order_id": "o-9003", "type": "order", "ts": t})  # near miss: paid after 14 minutes
    rows.append({"order_id": "o-9003", "type": "payment", "ts": t + 14 * MIN})
    return rows


# -- rules -----------------------------------------------------------------------------------

probe_then_big = (
    cep.begin("small", rh.col("amount") < 1)  # a card tester's probe
    .next("big", rh.col("amount") > 500)  # the very next charge on the card
    .within("10m")
)
brute_force = cep.begin("fail", ~rh.col("ok")).times_or_more(3).next("success", rh.col("ok")).within("5m")
takeover = (
    cep.begin("login", (rh.col("type") == "login") & rh.col("new_device"))
    .followed_by("password", rh.col("type") == "password_change")
    .followed_by("transfer", (rh.col("type") == "transfer") & (rh.col("amount") > 1_000))
    .within("30m")
)
hot_host = cep.begin("hot", rh.col("avg_cpu") > 90).times(3)
unpaid = (
    cep.begin("order", rh.col("type") == "order").not_followed_by("payment", rh.col("type") == "payment").within("15m")
)


def describe_probe(m: Row) -> str:
    small, big = m["small"][0], m["big"][0]
    return (
        f"card {m['card']}: ${small['amount']:.2f} at {at(small['ts'])}, then ${big['amount']:,.2f} at {at(big['ts'])}"
    )


def describe_brute_force(m: Row) -> str:
    return f"user {m['user']}: {m['fails']} failed logins from {at(m['match_start'])}, success at {at(m['match_end'])}"


def describe_takeover(m: Row) -> str:
    transfer = m["transfer"][0]
    return (
        f"user {m['user']}: new device at {at(m['match_start'])}, password changed at "
        f"{at(m['password'][0]['ts'])}, ${transfer['amount']:,.2f} out at {at(transfer['ts'])}"
    )


def describe_hot(m: Row) -> str:
    averages = ", ".join(f"{w['avg_cpu']:.1f}" for w in m["hot"])
    return f"host {m['host']}: minutes from {at(m['match_start'])} averaged {averages}% CPU"


def describe_unpaid(m: Row) -> str:
    return f"order {m['order_id']} placed at {at(m['match_start'])}: no payment by {at(m['match_start'] + 15 * MIN)}"


@dataclass
class Rule:
    title: str
    key: str
    describe: Callable[[Row], str]
    planted: tuple[str, ...]  # keys the rule must flag
    near_misses: tuple[str, ...]  # keys it must not flag
    out: rh.io.Collect = field(default_factory=rh.io.Collect)


def main() -> None:
    rng = random.Random(7)
    flow = rh.Flow("fraud-rules")

    def source(rows: list[Row]) -> rh.Stream:
        return flow.source(rh.io.Records(arrival_order(rows, rng)), time="ts", max_delay="30s")

    probes = Rule(
        "small charge, then a big one on the same card within 10 min",
        "card",
        describe_probe,
        planted=("c-9001",),
        near_misses=("c-9002", "c-9003"),
    )
    source(card_payments(rng)).key_by("card").match(probe_then_big).sink(probes.out)

    guesses = Rule(
        "3+ failed logins, then a success within 5 min",
        "user",
        describe_brute_force,
        planted=("u-9001",),
        near_misses=("u-9002",),
    )
    fails = {"fails": rh.col("fail").list.len()}
    source(logins(rng)).key_by("user").match(brute_force, measures=fails).sink(guesses.out)

    takeovers = Rule(
        "new device -> password change -> transfer over $1,000 within 30 min",
        "user",
        describe_takeover,
        planted=("u-9003",),
        near_misses=("u-9004",),
    )
    source(account_events(rng)).key_by("user").match(takeover).sink(takeovers.out)

    unpaid_orders = Rule(
        "order not paid within 15 min",
        "order_id",
        describe_unpaid,
        planted=("o-9001", "o-9002"),
        near_misses=("o-9003",),
    )
    source(orders(rng)).key_by("order_id").match(unpaid).sink(unpaid_orders.out)

    hot_hosts = Rule(
        "CPU above 90% for 3 consecutive minutes", "host", describe_hot, planted=("web-07",), near_misses=("web-03",)
    )
    per_minute = source(cpu_metrics(rng)).key_by("host").window(rh.tumbling("1m")).agg(avg_cpu=rh.mean("cpu"))
    per_minute.key_by("host").match(hot_host).sink(hot_hosts.out)  # a pattern over window results

    flow.run()

    rules = [probes, guesses, takeovers, hot_hosts, unpaid_orders]
    found = flagged = 0
    for rule in rules:
        alerts = rule.out.rows
        print(f"{rule.title}: {len(alerts)} alert{'' if len(alerts) == 1 else 's'}")
        for alert in alerts:
            print("   ", rule.describe(alert))
        keys = {str(alert[rule.key]) for alert in alerts}
        found += len(keys.intersection(rule.planted))
        flagged += len(keys.intersection(rule.near_misses))
    planted = sum(len(rule.planted) for rule in rules)
    print(f"planted cases found: {found} of {planted}; near misses flagged: {flagged}")


if __name__ == "__main__":
    main()
