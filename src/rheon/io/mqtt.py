"""``rh.io.Mqtt``: subscribe to MQTT topics (paho-mqtt 2, MQTT 5).

paho's network thread appends each message to a bounded buffer and ``next_batch`` takes what is
there. When the flow falls behind, the full buffer blocks the network thread, which then stops
reading the socket: TCP backpressure holds the broker back instead of memory growing here.
QoS 1 messages are acknowledged by hand, once their effects are safe (see :class:`Mqtt`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import polars as pl
from typing_extensions import override

from rheon.core.batch import RAW_COL
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SourceError
from rheon.core.extras import import_extra
from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS, JsonDecoder
from rheon.io.base import BuildContext, KeepsDeadLetters, Source, SourceLogic
from rheon.io.kafka.codec import Decoder, decoder_for, raw_payload

__all__ = ["Mqtt"]

log = logging.getLogger(__name__)

_RECEIVE_MAXIMUM = 65_535  # QoS 1 messages the broker may send us unacknowledged (the MQTT 5 maximum)
_RECONNECT_DELAY_S = (1, 30)  # paho's backoff: 1 s, doubling up to 30 s
_PUT_TIMEOUT_S = 0.1  # how often a blocked network thread checks whether the source is closing
_ACK_BARRIER = "rheon/ack-barrier"  # a filter unsubscribed at close, never subscribed
_CLOSE_WAIT_S = 2.0


def _paho() -> Any:
    mqtt = import_extra("paho.mqtt.client", user="rh.io.Mqtt", package="paho-mqtt 2", extra="mqtt")
    if not hasattr(mqtt, "CallbackAPIVersion"):
        msg = "rh.io.Mqtt needs paho-mqtt 2 (an older version is installed). Try: pip install -U 'paho-mqtt>=2'"
        raise FlowError(msg)
    return mqtt


def _filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid MQTT topic filter, or ``None`` if it is."""
    if not topic_filter or "\x00" in topic_filter:
        return "it is empty or contains a NUL character"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one, as in 'plant/#'"
        if "+" in level and level != "+":
            return "'+' must be a whole level, as in 'sensors/+/temperature'"
    return None


def _client_id(flow: str, operator: str) -> str:
    """A client id that is the same every time this flow's source runs (it names the session)."""
    raw = f"rheon-{flow}-{operator}"
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", raw)
    if clean == raw and len(raw) <= 64:
        return raw
    return f"{clean[:52]}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"


class Mqtt(Source):
    """Subscribe to MQTT topics: each message's payload becomes rows, its topic the ``_topic`` column.

    Parameters
    ----------
    topic_filter
        A topic filter, or several. ``+`` matches one level, ``#`` all remaining levels:
        ``"sensors/+/temperature"``, ``"plant/#"``.
    host, port
        The broker (MQTT 5: Mosquitto 1.6+, EMQX, HiveMQ, ...).
    qos
        1 (at least once, see below) or 0 (at most once).
    format
        ``"json"`` (a JSON object per message, or an array of objects carrying several events;
        parsed per batch by Polars), ``"bytes"`` (a ``value`` column) or a function
        ``bytes -> dict | list[dict] | None``.
    schema
        Column types for JSON payloads; a message that does not fit goes to the dead letters.
    max_depth, max_fields
        Caps on each JSON message, checked before it is parsed: levels of nested objects and arrays
        (default 16), and distinct fields, nested ones included (default 1,000; also the most columns
        the source learns without a schema). A message over a cap is a dead letter.
    metadata
        Besides ``_topic``, add ``_qos``, ``_retain`` and ``_received_ms`` (epoch ms of arrival).
    client_id
        Names the session the broker keeps for the flow. Default ``rheon-<flow>-<source>``, so a
        restarted flow finds its session. Copies of a flow running at once need different ids
        (the broker disconnects a client when another connects with its id).
    username, password
        Credentials, if the broker asks for them.
    max_batch
        Most messages per batch (a batch is whatever has arrived, up to this).
    max_buffered
        Most messages received but not yet handed to the flow. When the flow falls behind, the
        network thread waits for room and stops reading the socket (TCP backpressure).
    linger
        How long the first message of a batch may wait for ``max_batch`` to arrive. ``"0ms"``
        hands out what has arrived at once; a few ms give fewer, larger batches at high rates
        (more throughput) for that much latency.
    connect_timeout
        How long to wait at start for the broker to accept the connection and subscription.
    session_expiry
        How long the broker keeps the session (subscriptions, unacknowledged and queued
        messages) while the flow is down.
    keepalive
        The MQTT keepalive interval.

    When the connection drops, the source reconnects with backoff (1 s doubling to 30 s) and the
    session resumes. Undecodable messages go to the dead-letter output with their payload as text:
    not JSON or not UTF-8, over a cap, or with a value that does not fit the type its field has had
    so far (see `rheon.io._json.JsonDecoder`; the types learned are kept in checkpoints). For an
    array, each item that does not fit is a dead letter of its own, its reason naming the item.

    Guarantee: at-least-once with QoS 1, across crashes and reconnects. The session persists (no
    clean start) and messages are acknowledged by hand: with checkpoints, once the checkpoint
    holding their effects is complete; without, once their batch has gone through the flow. The
    broker redelivers what was not acknowledged to the same ``client_id``, so a message may be
    processed twice but is not lost, within the broker's limits: a broker keeps only so many
    messages for a session and drops the rest (Mosquitto: ``max_queued_messages``, default 1000,
    while the flow is down; while it falls behind, Mosquitto 2.0 with its defaults started
    dropping at about 5,000 pending messages of 1 KB, 3,000 of 4 KB, in tests on loopback). With
    checkpoints, about rate x ``checkpoint_every`` messages wait for their acknowledgement: keep
    that well below the broker's limit. QoS 0: at most once.

    Examples
    --------
    >>> import rheon as rh
    >>> from rheon.io.mqtt import Mqtt
    >>> Mqtt("sensors/+/temperature", host="127.0.0.1", qos=1)
    Mqtt('sensors/+/temperature', host='127.0.0.1', port=1883, qos=1, format='json')
    >>> flow = rh.Flow("plant")
    >>> temps = flow.source(Mqtt(["plant/#", "lab/+/temp"]), time="ts", max_delay="2s", name="sensors")
    >>> per_device = temps.key_by("_topic").window(rh.tumbling("1m")).agg(n=rh.count(), hi=rh.max("temp"))
    >>> Mqtt("a/b#")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: Mqtt: topic filter 'a/b#' is not valid: '#' must be a whole level and the last one, as in 'plant/#'
    """

    def __init__(
        self,
        topic_filter: str | Sequence[str],
        host: str = "127.0.0.1",
        port: int = 1883,
        qos: int = 1,
        *,
        format: str | Callable[[bytes], Any] = "json",
        schema: pl.Schema | dict[str, pl.DataType] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fields: int = DEFAULT_MAX_FIELDS,
        metadata: bool = False,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        max_batch: int = 10_000,
        max_buffered: int = 10_000,
        linger: Duration = "0ms",
        connect_timeout: Duration = "10s",
        session_expiry: Duration = "1d",
        keepalive: Duration = "60s",
    ) -> None:
        self.filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        if not self.filters or not all(isinstance(f, str) for f in self.filters):
            msg = f"Mqtt: topic_filter must be a topic filter or a list of them (got {topic_filter!r})"
            raise FlowError(msg)
        for f in self.filters:
            if (problem := _filter_problem(f)) is not None:
                msg = f"Mqtt: topic filter {f!r} is not valid: {problem}"
                raise FlowError(msg)
        if qos not in (0, 1):
            msg = f"Mqtt: qos must be 0 or 1 (got {qos!r}). QoS 1 with checkpoints gives at-least-once."
            raise FlowError(msg)
        for name, value in (("port", port), ("max_batch", max_batch), ("max_buffered", max_buffered)):
            if not isinstance(value, int) or value < 1:
                msg = f"Mqtt: {name} must be a positive integer (got {value!r})"
                raise FlowError(msg)
        self.host, self.port, self.qos, self.format, self.metadata = host, port, qos, format, metadata
        self.value_schema = pl.Schema(schema) if schema is not None else None
        self.client_id, self.username, self.password = client_id, username, password
        self.max_batch, self.max_buffered = max_batch, max_buffered
        self.linger_ms = to_ms(linger, what="Mqtt: linger")
        self.connect_timeout_ms = to_ms(connect_timeout, what="Mqtt: connect_timeout")
        self.session_expiry_s = to_ms(session_expiry, what="Mqtt: session_expiry") // 1000
        self.keepalive_s = max(1, to_ms(keepalive, what="Mqtt: keepalive") // 1000)
        self.max_depth, self.max_fields = max_depth, max_fields
        self._decoder("Mqtt")  # validate now

    def _decoder(self, where: str) -> Decoder:
        """Kafka's decoders, where a JSON array payload carries several events."""
        return decoder_for(
            self.format, self.value_schema, where, max_depth=self.max_depth, max_fields=self.max_fields, arrays=True
        )

    def __repr__(self) -> str:
        shown = self.filters[0] if len(self.filters) == 1 else self.filters
        return f"Mqtt({shown!r}, host={self.host!r}, port={self.port}, qos={self.qos}, format={self.format!r})"

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        return _MqttLogic(self, ctx)


class _Message(NamedTuple):
    payload: bytes
    topic: str
    qos: int
    retain: bool
    mid: int
    connection: int  # which connection delivered it: only that one can acknowledge it
    received_ns: int


class _MqttLogic(KeepsDeadLetters, SourceLogic):
    wakes_loop = True  # paho's thread wakes the flow for each message (see _on_message)

    def __init__(self, cfg: Mqtt, ctx: BuildContext) -> None:
        self.mqtt = mqtt = _paho()
        self.cfg = cfg
        self.clock = ctx.clock
        self.where = f"source '{ctx.operator}'"
        self.decode = cfg._decoder(self.where)
        self.keep_raw = ctx.event_time is not None  # dead letters for a bad time carry the payload
        self.client_id = cfg.client_id or _client_id(ctx.flow, ctx.operator)
        self.tag = f"source={self.where} client_id={self.client_id}"  # for log lines
        self.checkpointing = ctx.checkpointing
        self.wake = ctx.wake
        self.closing = threading.Event()
        # One producer (paho's thread) and one consumer: deque appends and pops are atomic, so
        # only a full buffer needs the `room` event.
        self.buffer: deque[_Message] = deque()
        self.room = threading.Event()
        self.unacked: list[tuple[int, int]] = []  # (mid, connection) of QoS 1 messages handed out
        self.dead: list[tuple[str, str]] = []
        self.connection = 0  # counts successful connections
        self.ready = threading.Event()  # the first connection is subscribed, or was refused
        self.refused: str | None = None
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.on_connect, client.on_subscribe = self._on_connect, self._on_subscribe
        client.on_disconnect, client.on_message = self._on_disconnect, self._on_message
        client.reconnect_delay_set(*_RECONNECT_DELAY_S)
        client.connect_timeout = cfg.connect_timeout_ms / 1000
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        self.client = client
        self._connect()

    def _connect(self) -> None:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.connect_timeout_ms / 1000
        props = self.mqtt.Properties(self.mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = _RECEIVE_MAXIMUM
        reason = None
        try:
            self.client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=props)
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            self.client.loop_start()
            if not self.ready.wait(max(0.0, deadline - time.monotonic())):
                reason = "no answer to CONNECT/SUBSCRIBE"
        if reason is None and self.refused is None:
            return
        self.close()
        if self.refused is not None:
            msg = f"{self.where}: the MQTT broker at {cfg.host}:{cfg.port} {self.refused}. Check username=, password= and the broker's ACL."
        else:
            msg = (
                f"{self.where}: cannot reach the MQTT broker at {cfg.host}:{cfg.port} within {cfg.connect_timeout_ms} "
                f"ms ({reason}). Is the broker running? Try a longer connect_timeout or check host= and port=."
            )
        raise SourceError(msg)

    # -- paho's network thread -----------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("mqtt_connect_refused %s reason=%r", self.tag, str(reason_code))
            if not self.ready.is_set():
                self.refused = f"refused the connection ({reason_code})"
                self.ready.set()
            return
        self.connection += 1
        again = self.connection > 1  # session_present=False after a drop: what was sent meanwhile is lost
        level, event = (logging.WARNING, "mqtt_reconnected") if again else (logging.INFO, "mqtt_connected")
        log.log(level, "%s %s session_present=%s", event, self.tag, flags.session_present)
        # With the session present the subscriptions exist; subscribing again keeps them up to
        # date and, with this retain handling, does not resend retained messages.
        options = self.mqtt.SubscribeOptions(qos=self.cfg.qos, retainHandling=1)
        client.subscribe([(f, options) for f in self.cfg.filters])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [f"{f}: {rc}" for f, rc in zip(self.cfg.filters, reason_codes, strict=False) if rc.is_failure]
        if refused:
            log.warning("mqtt_subscribe_refused %s filters=%r", self.tag, refused)
            if not self.ready.is_set():
                self.refused = f"refused the subscription ({'; '.join(refused)})"
        elif any(rc.value < self.cfg.qos for rc in reason_codes):
            log.warning("mqtt_qos_downgraded %s granted=%s", self.tag, [rc.value for rc in reason_codes])
        self.ready.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self.closing.is_set():
            log.warning("mqtt_disconnected %s reason=%r reconnect=backoff", self.tag, str(reason_code))

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        try:
            topic = m.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        buffer, capacity = self.buffer, self.cfg.max_buffered
        while len(buffer) >= capacity:  # backpressure: this thread stops reading the socket
            self.room.clear()
            if len(buffer) < capacity:  # the flow took some between the check and the clear
                break
            if self.closing.is_set():
                return  # never acknowledged: redelivered to the next session
            self.room.wait(_PUT_TIMEOUT_S)
        buffer.append(_Message(m.payload, topic, m.qos, m.retain, m.mid, self.connection, self.clock.now_ns()))
        self.wake.set()

    # -- the flow's thread ---------------------------------------------------------------------

    def _ack(self) -> None:
        """Acknowledge every QoS 1 message handed out so far."""
        current = self.connection
        for mid, connection in self.unacked:
            # A message from an earlier connection is redelivered on the new one and acknowledged
            # there; its id may since have been given to another message.
            if connection == current:
                self.client.ack(mid, 1)
        self.unacked = []

    def _lingering(self) -> float:
        """Seconds the oldest message may still wait for a fuller batch (0 if it may not)."""
        items = self.buffer
        if not self.cfg.linger_ms or not items or len(items) >= min(self.cfg.max_batch, self.cfg.max_buffered):
            return 0.0
        left_ns: int = items[0].received_ns + self.cfg.linger_ms * 1_000_000 - self.clock.now_ns()
        return max(0.0, left_ns / 1e9)

    @override
    def next_batch(self) -> pl.DataFrame | None:
        if not self.checkpointing and self.unacked:
            self._ack()  # the previous batch has gone through the whole flow
        buffer = self.buffer
        if not buffer or self._lingering():
            return None
        items = [buffer.popleft() for _ in range(min(self.cfg.max_batch, len(buffer)))]
        self.room.set()
        self.last_ingest_ns = items[0].received_ns
        self.unacked += [(m.mid, m.connection) for m in items if m.qos]
        frame, index, bad = self.decode([m.payload for m in items])
        self.dead += [(f"{reason} (topic {items[i].topic})", raw_payload(items[i].payload)) for i, reason in bad]
        if not index:
            return pl.DataFrame()
        picked = [items[i] for i in index]
        extra = [pl.Series("_topic", [m.topic for m in picked], dtype=pl.String)]
        if self.cfg.metadata:
            extra += [
                pl.Series("_qos", [m.qos for m in picked], dtype=pl.Int8),
                pl.Series("_retain", [m.retain for m in picked], dtype=pl.Boolean),
                pl.Series("_received_ms", [m.received_ns // 1_000_000 for m in picked], dtype=pl.Int64),
            ]
        if self.keep_raw:
            extra.append(pl.Series(RAW_COL, [raw_payload(m.payload) for m in picked], dtype=pl.String))
        return frame.with_columns(extra)

    @override
    def done(self) -> bool:
        return False

    @override
    def wait_hint_s(self) -> float | None:
        return self._lingering() or None  # else asleep until a message wakes the flow

    @override
    def snapshot(self) -> Any:
        types = self.decode.state() if isinstance(self.decode, JsonDecoder) else None
        return {"client_id": self.client_id, "types": types}  # the read position is the broker's session

    @override
    def restore(self, position: Any) -> None:
        if isinstance(self.decode, JsonDecoder):
            self.decode.load_state((position or {}).get("types"))
        saved = (position or {}).get("client_id")
        if saved is not None and saved != self.client_id:  # the old session's messages stay there
            log.warning("mqtt_client_id_changed %s checkpoint_client_id=%s", self.tag, saved)

    @override
    def checkpoint_done(self, checkpoint_id: int) -> None:
        self._ack()  # their effects are in the completed checkpoint

    @override
    def run_finished(self) -> None:
        # The last batch went through the flow (a failure would not call this): acknowledge it.
        if not self.checkpointing and self.unacked:
            self._ack()

    @override
    def close(self) -> None:
        self.closing.set()  # unblocks the network thread; what it drops now is redelivered later
        if self.client.is_connected():
            # The broker handles a connection's packets in order: once it has answered this
            # UNSUBSCRIBE (of a filter never subscribed) it has our acknowledgements, even if a
            # restarted flow takes the session over at once.
            answered = threading.Event()
            self.client.on_unsubscribe = lambda *args: answered.set()
            if self.client.unsubscribe(_ACK_BARRIER)[0] == 0:
                answered.wait(_CLOSE_WAIT_S)
        try:
            self.client.disconnect()  # a clean DISCONNECT keeps the session for session_expiry
        finally:
            self.client.loop_stop()
