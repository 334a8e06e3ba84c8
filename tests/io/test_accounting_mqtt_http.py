"""Every MQTT message and every event POSTed to HttpIngest is accounted for, whatever it holds
(issue 10, acceptance 2): see tests/runtime/test_accounting.py for the records and the checks."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

from hypothesis import HealthCheck, given, settings

from rheon.io.http import HttpIngest
from tests.io.test_mqtt import broker, paho, publish, source  # noqa: F401 - the fixtures too
from tests.runtime.test_accounting import NO_SHRINK, _run_and_account, hostile_messages, payloads


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=hostile_messages)
def test_mqtt_source_accounts_for_every_message(broker, tmp_path_factory, rows) -> None:  # noqa: F811 - the fixture
    messages, sent = payloads(rows, arrays=True)
    topic = f"rheon/accounting/{threading.get_ident()}/{id(rows)}"
    mqtt = source(broker, topic, qos=1)
    _run_and_account(
        mqtt, sent, tmp_path_factory.mktemp("mqtt"), feed=lambda: publish(broker, [(topic, m) for m in messages])
    )


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=hostile_messages)
def test_http_ingest_accounts_for_every_event(tmp_path_factory, rows) -> None:
    """One event per request: each is accepted (202) or refused (400, one dead letter)."""
    messages, sent = payloads(rows, arrays=True)
    ingest = HttpIngest(port=0)
    answers: list[int] = []

    def post_all() -> None:
        url = ingest.wait_listening("60s")
        for message in messages:
            request = urllib.request.Request(f"{url}/events", data=message, method="POST")
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answers.append(response.status)
            except urllib.error.HTTPError as exc:
                answers.append(exc.code)

    _run_and_account(ingest, sent, tmp_path_factory.mktemp("http"), feed=post_all)
    assert sorted(set(answers)) <= [202, 400]
    assert len(answers) == len(messages)
