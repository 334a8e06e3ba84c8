"""One way to listen: the dashboard and HTTP ingest bind through ``core/net.listen`` and report a
port in use as their own layer's error."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import rheon as rh
from rheon.core.errors import FlowError, SourceError
from rheon.core.net import listen


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_listen_gives_a_listening_socket_on_a_free_port():
    sock = listen("127.0.0.1", 0, where="ui", option="ui", error=FlowError)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the kernel accepts it into the backlog: the socket listens
    finally:
        sock.close()


def test_a_port_in_use_is_the_dashboards_flow_error(taken):
    flow = rh.Flow("busy")
    flow.source(rh.io.Records([{"x": 1}])).sink(rh.io.Collect())
    expected = rf"ui: cannot listen on 127\.0\.0\.1:{taken}: .*in use.*Try another port, or ui=0 for a free one"
    with pytest.raises(FlowError, match=expected):
        flow.run(ui=taken)


def test_a_port_in_use_is_the_ingest_sources_source_error(taken):
    flow = rh.Flow("busy")
    flow.source(rh.io.HttpIngest(port=taken), name="in").sink(rh.io.Collect())
    with pytest.raises(SourceError, match=rf"source 'in': cannot listen on 127\.0\.0\.1:{taken}: .*port=0"):
        flow.run()
