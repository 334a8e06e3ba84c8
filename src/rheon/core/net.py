"""Listening sockets for the servers a flow runs in its own process (the web dashboard, HTTP
ingest): bound before the server starts, so a port in use fails the run at once with a message
that names the step and the address, instead of inside the server's thread."""

from __future__ import annotations

import socket

from rheon.core.errors import RheonError

__all__ = ["listen"]


def listen(
    host: str,
    port: int,
    *,
    where: str,
    option: str,
    error: type[RheonError],
    backlog: int = 128,
) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: any free port; an IPv6 host if it has a
    colon), with ``SO_REUSEADDR`` so that a restarted flow can take its port back at once.

    Parameters
    ----------
    host, port
        Where to listen.
    where
        Who listens, for the message: ``"ui"``, ``"source 'in'"``.
    option
        The setting that chose the port, for the fix the message suggests: ``"ui"``, ``"port"``.
    error
        What to raise when the address is taken or cannot be used (the caller's layer of the
        error tree: :class:`~rheon.core.errors.FlowError` for the dashboard,
        :class:`~rheon.core.errors.SourceError` for a source).
    backlog
        Connections the kernel queues before they are accepted.

    Examples
    --------
    >>> from rheon.core.errors import SourceError
    >>> sock = listen("127.0.0.1", 0, where="source 'in'", option="port", error=SourceError)
    >>> port = sock.getsockname()[1]
    >>> try:
    ...     listen("127.0.0.1", port, where="source 'in'", option="port", error=SourceError)
    ... except SourceError as exc:
    ...     print(str(exc).replace(str(port), "PORT"))
    source 'in': cannot listen on 127.0.0.1:PORT: Address already in use. Is another server using port PORT? Try another port, or port=0 for a free one.
    >>> sock.close()
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        msg = (
            f"{where}: cannot listen on {host}:{port}: {exc.strerror or exc}. "
            f"Is another server using port {port}? Try another port, or {option}=0 for a free one."
        )
        raise error(msg) from exc
    return sock
