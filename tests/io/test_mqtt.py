"""MQTT source against a real broker (Mosquitto on 127.0.0.1:1883, or RHEON_TEST_MQTT=host:port).

paho-mqtt publishes the test messages. Every test uses its own topic and client ids; sessions
expire a minute after the test.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.io.mqtt import Mqtt, _client_id
from rheon.testing import collect
from tests.crash import Crash, committed
from tests.proxy import TcpProxy
from tests.services import free_port, reachable, unavailable

try:
    import paho.mqtt.client as mqtt
except ImportError:  # pragma: no cover - reported by the paho fixture
    mqtt = None


@pytest.fixture(scope="session")
def paho() -> None:
    if mqtt is None:
        unavailable("paho-mqtt", "pip install -e '.[mqtt]' (paho-mqtt 2)")


@pytest.fixture(scope="session")
def broker(paho: None) -> tuple[str, int]:
    host, _, port = os.environ.get("RHEON_TEST_MQTT", "127.0.0.1:1883").partition(":")
    if not reachable(host, int(port)):
        unavailable(
            f"an MQTT broker at {host}:{port}",
            "apt-get install mosquitto && mosquitto -d, or set RHEON_TEST_MQTT=host:port",
        )
    return host, int(port)


@pytest.fixture
def topic() -> str:
    return f"rheon-test/{uuid.uuid4().hex[:12]}"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def source(broker: tuple[str, int], topic_filter: str | list[str], **options: Any) -> Mqtt:
    options.setdefault("client_id", _unique("rheon-test"))
    options.setdefault("session_expiry", "1m")
    return Mqtt(topic_filter, broker[0], broker[1], **options)


def publish(broker: tuple[str, int], messages: list[tuple[str, Any]], *, qos: int = 1, pause_s: float = 0.0) -> None:
    """Publish ``(topic, payload)`` pairs: bytes as they are, anything else as JSON."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=_unique("pub"), protocol=mqtt.MQTTv5)
    client.connect(*broker)
    client.loop_start()
    infos = []
    for t, payload in messages:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        infos.append(client.publish(t, data, qos=qos))
        if pause_s:
            time.sleep(pause_s)
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def in_background(fn: Callable[[], None]) -> Callable[[Any], None]:
    """An ``on_start`` hook that runs ``fn`` in a thread (the flow is subscribed by then)."""

    def start(executor: Any) -> None:
        threading.Thread(target=fn, daemon=True).start()

    return start


def stop_after(flow: rh.Flow, n: int, seen: list[Any] | None = None) -> Callable[[dict[str, Any]], None]:
    """A sink function that stops the flow once it has seen ``n`` rows."""
    rows = seen if seen is not None else []

    def watch(row: dict[str, Any]) -> None:
        rows.append(row)
        if len(rows) == n:
            flow.stop()

    return watch


def test_wildcards_and_topic_column(broker, topic):
    flow = rh.Flow("wild")
    src = flow.source(source(broker, [f"{topic}/+/temp", f"{topic}/lab/#"], metadata=True), name="in")
    out = collect(src)
    src.sink(stop_after(flow, 3))
    messages = [
        (f"{topic}/a/temp", {"v": 1}),
        (f"{topic}/a/humidity", {"v": 2}),  # matches neither filter
        (f"{topic}/lab/x/y", {"v": 3}),
        (f"{topic}/b/temp", {"v": 4}),
    ]
    flow.run(duration="10s", on_start=lambda ex: publish(broker, messages))
    assert sorted((r["_topic"], r["v"]) for r in out.rows) == [
        (f"{topic}/a/temp", 1),
        (f"{topic}/b/temp", 4),
        (f"{topic}/lab/x/y", 3),
    ]
    first = out.rows[0]
    assert list(first) == ["v", "_topic", "_qos", "_retain", "_received_ms"]
    assert (first["_qos"], first["_retain"]) == (1, False)
    assert abs(first["_received_ms"] - time.time() * 1000) < 60_000


def test_json_objects_and_arrays(broker, topic):
    flow = rh.Flow("arrays")
    src = flow.source(source(broker, topic))
    out = collect(src)
    src.sink(stop_after(flow, 4))
    messages = [(topic, {"a": 1}), (topic, [{"a": 2}, {"a": 3}]), (topic, b"  []"), (topic, b' [{"a": 4}]')]
    flow.run(duration="10s", on_start=lambda ex: publish(broker, messages))
    assert out.rows == [{"a": a, "_topic": topic} for a in (1, 2, 3, 4)]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("bytes", [b"a,1", b"b,2"]), (lambda v: {"k": v.split(b",")[0].decode()}, ["a", "b"])],
    ids=["bytes", "function"],
)
def test_bytes_and_custom_decoders(broker, topic, fmt, expected):
    flow = rh.Flow("decoders")
    src = flow.source(source(broker, topic, format=fmt))
    out = collect(src)
    src.sink(stop_after(flow, 2))
    flow.run(duration="10s", on_start=lambda ex: publish(broker, [(topic, b"a,1"), (topic, b"b,2")]))
    assert [next(iter(r.values())) for r in out.rows] == expected
    assert {r["_topic"] for r in out.rows} == {topic}


def test_bad_payloads_are_dead_letters_with_their_payload(broker, topic):
    flow = rh.Flow("bad")
    src = flow.source(source(broker, topic), name="in")
    good, bad = collect(src), collect(flow.dead_letters())
    src.sink(stop_after(flow, 3))
    messages = [(topic, {"a": 1}), (topic, b"{not json"), (topic, b"42"), (topic, b"[1, {}]"), (topic, [{"a": 2}])]
    messages += [(topic, b"[{broken"), (topic, {"a": 3})]
    flow.run(duration="10s", on_start=lambda ex: publish(broker, messages))
    assert [r["a"] for r in good.rows] == [1, 2, 3]
    assert [(b["operator"], b["payload"]) for b in bad.rows] == [
        ("source 'in'", "{not json"),
        ("source 'in'", "42"),
        ("source 'in'", "[1, {}]"),
        ("source 'in'", "[{broken"),
    ]
    reasons = [b["reason"] for b in bad.rows]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1].startswith("expected a JSON object, got int")
    assert reasons[2].startswith("expected a JSON object or an array of objects, got an array of int")
    assert all(r.endswith(f"(topic {topic})") for r in reasons)
    assert flow.metrics().dead_letters == 4


def test_event_time_windows_over_mqtt(broker, topic):
    events = [{"device": f"d{i % 3}", "temp": float(i), "ts": i * 250} for i in range(24)]
    flow = rh.Flow("windows")
    src = flow.source(source(broker, f"{topic}/#"), time="ts", max_delay="500ms", name="in")
    windows = collect(src.key_by("device").window(rh.tumbling("1s")).agg(n=rh.count(), hi=rh.max("temp")))
    src.sink(stop_after(flow, len(events)))
    # Four events per message, as a device batching its readings would send them.
    messages = [(f"{topic}/{events[i]['device']}", events[i : i + 4]) for i in range(0, len(events), 4)]
    flow.run(duration="10s", drain=True, on_start=lambda ex: publish(broker, messages))
    expected: dict[tuple[str, int], list[float]] = {}
    for e in events:
        expected.setdefault((e["device"], e["ts"] // 1000 * 1000), []).append(e["temp"])
    assert sorted(windows.rows, key=lambda r: (r["device"], r["window_start"])) == [
        {"device": d, "window_start": start, "window_end": start + 1000, "n": len(temps), "hi": max(temps)}
        for (d, start), temps in sorted(expected.items())
    ]


def test_at_least_once_across_a_crash(broker, topic, tmp_path):
    """Messages handed out after the last checkpoint are not acknowledged: the broker redelivers them."""
    client_id, out_dir, ckpt = _unique("rheon-crash"), tmp_path / "out", tmp_path / "ckpt"

    def build(crash_after: int | None = None, have: set[int] | None = None) -> tuple[rh.Flow, list[int]]:
        flow = rh.Flow("mqtt-crash")
        src = flow.source(source(broker, topic, client_id=client_id, max_batch=10), name="in")
        src.sink(rh.io.FileSink(out_dir), name="out")
        seen: list[int] = []

        def watch(row: dict[str, Any]) -> None:
            seen.append(row["i"])
            if len(seen) == crash_after:
                raise Crash
            if have is not None and have | set(seen) >= set(range(300)):
                flow.stop()

        src.sink(watch, name="watch")
        return flow, seen

    first, seen_first = build(crash_after=120)
    paced = [(topic, {"i": i}) for i in range(200)]
    publisher = threading.Thread(target=lambda: publish(broker, paced, pause_s=0.002))
    with pytest.raises(Crash):
        first.run(checkpoint_dir=ckpt, checkpoint_every="100ms", duration="10s", on_start=lambda ex: publisher.start())
    publisher.join()
    checkpointed = {r["i"] for r in committed(out_dir)}
    after_checkpoint = set(seen_first) - checkpointed
    assert checkpointed, "the crashed run took no checkpoint: the test proves nothing"
    assert after_checkpoint  # at least the batch that crashed
    publish(broker, [(topic, {"i": i}) for i in range(200, 300)])  # while the flow is down

    second, seen_second = build(have=checkpointed)
    second.run(checkpoint_dir=ckpt, checkpoint_every="100ms", duration="10s")
    assert after_checkpoint <= set(seen_second)  # redelivered, not lost
    written = [r["i"] for r in committed(out_dir)]
    assert sorted(set(written)) == list(range(300))
    # Messages were acknowledged at checkpoints, so none that made it into one came back.
    assert len(written) == 300
    assert not checkpointed & set(seen_second)


def test_acknowledged_messages_are_not_redelivered(broker, topic):
    """Without checkpoints a batch is acknowledged once it has gone through the flow."""
    client_id = _unique("rheon-ack")
    runs = []
    for messages in ([(topic, {"i": i}) for i in range(30)], [(topic, {"i": 30})]):
        flow = rh.Flow("acks")
        src = flow.source(source(broker, topic, client_id=client_id, max_batch=7))
        seen: list[dict[str, Any]] = []
        src.sink(stop_after(flow, len(messages), seen))
        flow.run(duration="10s", on_start=lambda ex, m=messages: publish(broker, m))
        runs.append([r["i"] for r in seen])
    assert sorted(runs[0]) == list(range(30))
    assert runs[1] == [30]


def test_without_checkpoints_the_batch_in_flight_at_a_crash_is_redelivered(broker, topic):
    client_id = _unique("rheon-inflight")
    flow = rh.Flow("inflight")
    src = flow.source(source(broker, topic, client_id=client_id, max_batch=1000))
    batches: list[list[int]] = []

    def crash(frame: pl.DataFrame) -> None:
        batches.append(frame["i"].to_list())
        if sum(map(len, batches)) >= 20:
            raise Crash

    src.sink(rh.io.Callback(crash, batch=True))
    with pytest.raises(Crash):
        flow.run(
            duration="10s", on_start=in_background(lambda: publish(broker, [(topic, {"i": i}) for i in range(20)]))
        )
    again = rh.Flow("inflight")
    seen: list[dict[str, Any]] = []
    again.source(source(broker, topic, client_id=client_id)).sink(stop_after(again, len(batches[-1]), seen))
    again.run(duration="10s")
    assert [r["i"] for r in seen] == batches[-1]


def test_reconnects_and_resumes_the_session_when_the_connection_drops(broker, topic, caplog):
    client_id = _unique("rheon-drop")
    flow = rh.Flow("drop")
    seen: list[int] = []

    def watch(row: dict[str, Any]) -> None:
        seen.append(row["i"])
        if set(range(100)) <= set(seen):
            flow.stop()

    flow.source(source(broker, topic, client_id=client_id)).sink(watch)

    def scenario() -> None:
        publish(broker, [(topic, {"i": i}) for i in range(50)])
        # Another client takes the session over (the broker disconnects the source), receives
        # what is published meanwhile without acknowledging it, and goes away.
        impostor = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        got: list[bytes] = []
        impostor.on_message = lambda client, userdata, message: got.append(message.payload)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 60
        impostor.connect(*broker, clean_start=False, properties=props)
        impostor.loop_start()
        publish(broker, [(topic, {"i": i}) for i in range(50, 100)])
        wait_until(lambda: len(got) > 0, timeout_s=60)  # it holds messages it will never acknowledge
        impostor.disconnect()
        impostor.loop_stop()

    with caplog.at_level("WARNING", logger="rheon"):
        flow.run(duration="120s", on_start=in_background(scenario))  # it stops once all 100 came
    assert set(seen) == set(range(100))
    assert "mqtt_disconnected source=source 'source_1'" in caplog.text
    assert f"mqtt_reconnected source=source 'source_1' client_id={client_id} session_present=True" in caplog.text


@pytest.fixture
def behind_proxy(broker) -> Iterator[tuple[tuple[str, int], TcpProxy]]:
    """The broker's address through a TcpProxy the test can cut, and the proxy."""
    proxy = TcpProxy(free_port(), broker[1], target_host=broker[0])
    yield ("127.0.0.1", proxy.listen_port), proxy
    proxy.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_broker_going_away_for_two_seconds_mid_run_loses_nothing(broker, topic, behind_proxy, caplog):
    """The network path to the broker goes away mid-run and comes back: the source reconnects with
    backoff, resumes its session, and gets what was published meanwhile."""
    proxied, proxy = behind_proxy
    client_id = _unique("rheon-outage")
    flow = rh.Flow("outage")
    seen: list[int] = []
    during: list[set[int]] = []
    restored_at: list[float] = []

    def watch(row: dict[str, Any]) -> None:
        seen.append(row["i"])
        if set(range(300)) <= set(seen):
            flow.stop()

    flow.source(source(proxied, topic, client_id=client_id), name="in").sink(watch)

    def scenario() -> None:
        publish(broker, [(topic, {"i": i}) for i in range(100)])  # publishers reach the broker directly
        wait_until(lambda: set(range(100)) <= set(seen))
        proxy.cut()
        publish(broker, [(topic, {"i": i}) for i in range(100, 200)])  # queued in the source's session
        time.sleep(2.0)
        during.append(set(seen))
        proxy.restore()
        restored_at.append(time.monotonic())
        publish(broker, [(topic, {"i": i}) for i in range(200, 300)])

    with caplog.at_level("WARNING", logger="rheon"):
        flow.run(duration="120s", on_start=in_background(scenario))  # it stops once all 300 came
    assert during == [set(range(100))]  # the outage was real: nothing arrived while it lasted
    assert set(seen) == set(range(300))  # at-least-once: a message may come twice, none is lost
    assert time.monotonic() - restored_at[0] < 10  # back within paho's backoff (1 s, 2 s, 4 s, ...)
    assert "mqtt_disconnected source=source 'in'" in caplog.text
    assert f"mqtt_reconnected source=source 'in' client_id={client_id} session_present=True" in caplog.text


def test_a_full_buffer_holds_the_broker_back(broker, topic):
    """With a slow flow the network thread waits for room: the buffer never exceeds max_buffered."""
    flow = rh.Flow("backpressure")
    src = flow.source(source(broker, topic, max_buffered=5, max_batch=5), name="in")
    buffered: list[int] = []
    logic: list[Any] = []

    def slow(frame: pl.DataFrame) -> None:
        buffered.append(len(logic[0].buffer))
        time.sleep(0.003)

    src.sink(rh.io.Callback(slow, batch=True))
    src.sink(stop_after(flow, 300))
    out = collect(src)

    def start(executor: Any) -> None:
        logic.append(executor.sources[0].logic)
        in_background(lambda: publish(broker, [(topic, {"i": i}) for i in range(300)]))(executor)

    flow.run(duration="20s", on_start=start)
    assert sorted(r["i"] for r in out.rows) == list(range(300))
    assert max(buffered) == 5  # full: the network thread had to wait


def test_linger_waits_for_a_fuller_batch(broker, topic):
    flow = rh.Flow("linger")
    src = flow.source(source(broker, topic, linger="300ms", max_batch=100))
    batches: list[tuple[int, float]] = []
    src.sink(rh.io.Callback(lambda frame: batches.append((frame.height, time.monotonic())), batch=True))
    src.sink(stop_after(flow, 3))
    started = [0.0]

    def start(executor: Any) -> None:
        started[0] = time.monotonic()
        publish(broker, [(topic, {"i": i}) for i in range(3)])

    flow.run(duration="10s", on_start=start)
    assert [n for n, _ in batches] == [3]
    assert batches[0][1] - started[0] >= 0.25


@pytest.mark.usefixtures("paho")
def test_unreachable_broker_is_a_clear_error():
    port = free_port()
    flow = rh.Flow("down")
    flow.source(Mqtt("t", port=port, connect_timeout="500ms"), name="in").sink(rh.io.Collect())
    expected = (
        rf"source 'in': cannot reach the MQTT broker at 127\.0\.0\.1:{port} within 500 ms "
        r"\(ConnectionRefusedError.*\)\. Is the broker running\?"
    )
    with pytest.raises(rh.SourceError, match=expected):
        flow.run(duration="1s")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic_filter": "a/#/b"}, r"topic filter 'a/#/b' is not valid: '#' must be a whole level and the last one"),
        ({"topic_filter": "a/b+"}, r"topic filter 'a/b\+' is not valid: '\+' must be a whole level"),
        ({"topic_filter": []}, r"topic_filter must be a topic filter or a list of them \(got \[\]\)"),
        ({"topic_filter": "a", "qos": 2}, r"qos must be 0 or 1 \(got 2\)"),
        ({"topic_filter": "a", "max_buffered": 0}, r"max_buffered must be a positive integer \(got 0\)"),
        ({"topic_filter": "a", "format": "xml"}, r"format must be 'json', 'bytes' or a function"),
        ({"topic_filter": "a", "session_expiry": "1 day"}, r"Mqtt: session_expiry: cannot read duration '1 day'"),
    ],
)
def test_config_mistakes_are_flow_errors(kwargs, message):
    with pytest.raises(rh.FlowError, match=message):
        Mqtt(**kwargs)


def test_the_default_client_id_is_stable_per_flow_and_source():
    assert _client_id("plant", "sensors") == "rheon-plant-sensors"
    odd = _client_id("my flow", "source/1")
    assert odd.startswith("rheon-my_flow-source_1-")
    assert odd == _client_id("my flow", "source/1") != _client_id("my_flow", "source_1")
    assert len(_client_id("f" * 200, "s")) <= 64
