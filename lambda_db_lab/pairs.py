"""The accept loop every relay of the lab needs: a client in, a connection to upstream out.

:func:`serve_pairs` accepts clients on a listening socket until it is closed, connects each
to the upstream server (refusing the client, by closing it, when upstream is down, as a
dead host would not) and hands the pair to the relay: :mod:`lambda_db_lab.relay`,
:mod:`lambda_db_lab.delay` and :mod:`lambda_db_lab.commit_relay` all use it.

Example::

    threading.Thread(
        target=serve_pairs, args=(listener, ("127.0.0.1", pg.port), closed, sockets, relay_pair),
        daemon=True,
    ).start()
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

__all__ = ["serve_pairs"]


def serve_pairs(
    listener: socket.socket,
    upstream: tuple[str, int],
    closed: threading.Event,
    sockets: list[socket.socket],
    relay: Callable[[socket.socket, socket.socket], None],
) -> None:
    """Accept until ``listener`` closes; call ``relay(client, server)`` for each pair.

    Both sockets are blocking, with ``TCP_NODELAY`` (a relay must not hold back small
    messages), and are appended to ``sockets`` so that the owner can close them.
    """
    while not closed.is_set():
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(upstream, timeout=5)
        except OSError:
            client.close()
            continue
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets += [client, server]
        relay(client, server)
