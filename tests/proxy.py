"""A TCP proxy a test can cut and restore, to take a server away without losing its state."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forward 127.0.0.1:listen_port to 127.0.0.1:target_port.

    ``cut()`` drops every connection and refuses new ones (the server "goes away");
    ``restore()`` lets clients in again.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.open = threading.Event()
        self.open.set()
        self.sockets: set[socket.socket] = set()
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
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.open.clear()
        server, self.server = self.server, None
        if server is not None:
            server.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self.sockets.clear()

    def restore(self) -> None:
        self._listen()
        self.open.set()

    def close(self) -> None:
        self.stopped = True
        self.cut()
