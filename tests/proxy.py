"""A TCP proxy a test can cut and restore, to take a server away without losing its state."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forward 127.0.0.1:listen_port to target_host:target_port.

    ``cut()`` drops every connection and refuses new ones (the server "goes away");
    ``restore()`` lets clients in again; ``cut_for(seconds)`` does both, the second in a timer.
    ``cut(half_open=True)`` tells only the clients: the server's side of each connection stays
    open, as when the network fails instead of the client closing its connection.
    """

    def __init__(self, listen_port: int, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.target_host = target_host
        self.open = threading.Event()
        self.open.set()
        self.pairs: set[tuple[socket.socket, socket.socket]] = set()  # (client, upstream)
        self.held: set[socket.socket] = set()  # upstream sockets a half-open cut left open
        self.lock = threading.Lock()
        self.server: socket.socket | None = None
        self.stopped = False
        self._listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _listen(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.listen_port))
        server.listen(64)
        server.settimeout(0.2)
        self.server = server

    def _accept(self) -> None:
        while not self.stopped:
            server = self.server
            if server is None or not self.open.is_set():
                self.open.wait(0.2)
                continue
            try:
                client, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the timeout was for connecting: an idle connection must not time out
            pair = (client, upstream)
            with self.lock:
                if not self.open.is_set():  # cut while this connection was being set up
                    _drop(client, upstream)
                    continue
                self.pairs.add(pair)
            for a, b in (pair, pair[::-1]):
                threading.Thread(target=self._pipe, args=(a, b, pair), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.pairs.discard(pair)
                _drop(*(s for s in (source, target) if s not in self.held))

    def cut(self, *, half_open: bool = False) -> None:
        self.open.clear()
        server, self.server = self.server, None
        if server is not None:
            _drop(server)
        with self.lock:
            for client, upstream in self.pairs:
                if half_open:
                    self.held.add(upstream)
                _drop(client, *(() if half_open else (upstream,)))
            self.pairs.clear()

    def restore(self) -> None:
        self._listen()
        self.open.set()

    def cut_for(self, seconds: float, *, half_open: bool = False) -> threading.Timer:
        """Cut now and restore after ``seconds`` in the background (safe to call from a flow's thread)."""
        self.cut(half_open=half_open)
        timer = threading.Timer(seconds, self.restore)
        timer.daemon = True
        timer.start()
        return timer

    def close(self) -> None:
        self.stopped = True
        self.cut()
        with self.lock:
            _drop(*self.held)
            self.held.clear()


def _drop(*sockets: socket.socket) -> None:
    """Shut connections down, then close them.

    Shut down first: a bare ``close()`` while another thread is blocked in ``recv()`` on the socket
    neither wakes that thread nor sends FIN (the kernel closes the socket only once the call
    returns), so the server would never learn that its client went away.
    """
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
    for s in sockets:
        with contextlib.suppress(OSError):
            s.close()
