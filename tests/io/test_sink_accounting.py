"""Every row reaching a sink is written or a dead letter, whatever it holds (issue 10, acceptance 2):
random hostile records (tests/runtime/test_accounting.py) from `Records` straight into PostgreSQL
(append, the table made from the first rows), a Redis stream, a webhook, a callback and the console;
for each, rows written + its dead letters + the source's dead letters = records sent, and the
flow never stops. (File sinks: tests/runtime/test_accounting.py; Kafka: tests/io/kafka/.)"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.testing import collect
from tests.io.test_postgres_hostile import query
from tests.io.test_redis import URL, client  # noqa: F401 - the fixture too
from tests.runtime.test_accounting import ANCHOR, NO_SHRINK, _python, records


class Receiver:
    """A webhook endpoint on loopback that counts the rows posted to it."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        rows = self.rows

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rows.extend(json.loads(line) for line in body.decode().splitlines() if line)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=st.lists(records(), max_size=25), batch_size=st.sampled_from([1, 1000]))
def test_every_sink_accounts_for_every_row(dsn, client, rows, batch_size) -> None:  # noqa: F811 - the fixture
    sent = [{**_python(row), "id": i} for i, row in enumerate([ANCHOR, *rows])]
    name = f"rheon_acct_{uuid.uuid4().hex[:10]}"
    receiver = Receiver()
    called: list[dict[str, Any]] = []
    try:
        flow = rh.Flow("sinks")
        stream = flow.source(rh.io.Records(sent, batch_size=batch_size))
        stream.sink(rh.io.Postgres(name, dsn=dsn), name="pg")
        stream.sink(rh.io.Redis(URL, kind="stream", key=name), name="redis")
        stream.sink(rh.io.Webhook(receiver.url, retries=0), name="hook")
        stream.sink(rh.io.Callback(called.append), name="callback")
        stream.sink(rh.io.Console(), name="console")
        dead = collect(flow.dead_letters())
        flow.run()  # never stops
        by_op: dict[str, int] = {}
        for letter in dead.rows:
            by_op[letter["operator"]] = by_op.get(letter["operator"], 0) + 1
        reached = len(sent) - sum(n for op, n in by_op.items() if op.startswith("source "))
        written = {
            "pg": query(dsn, f'SELECT count(*) FROM "{name}"')[0][0] if reached else 0,
            "redis": client.xlen(name),
            "hook": len(receiver.rows),
            "callback": len(called),
        }
        for sink, n in written.items():
            assert n + by_op.get(f"sink '{sink}'", 0) == reached, (sink, n, by_op)
        assert by_op.get("sink 'console'", 0) == 0
    finally:
        receiver.close()
        client.delete(name)
        query(dsn, f'DROP TABLE IF EXISTS "{name}"')
