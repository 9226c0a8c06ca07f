"""A TCP relay that can go silent: the network path that neither answers nor closes.

A NAT that forgot the flow, a proxy that stopped forwarding, a security group changed
under a running function: the client's socket stays open and writable, and nothing
ever comes back. :meth:`Relay.silence` reproduces that between a client and the real
server: from the moment it returns, no byte crosses in either direction and no socket
is closed, for connections already open and for new ones (the listener still accepts).
:meth:`Relay.heal` lets traffic flow again.

Example::

    with Relay("127.0.0.1", pg.port) as relay:
        conn = psycopg2.connect(host=relay.host, port=relay.port, ...)
        relay.silence()   # conn.cursor().execute("SELECT 1") would now wait forever
        relay.heal()
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from lambda_db_lab.pairs import serve_pairs

__all__ = ["Relay"]

_POLL_SECONDS = 0.02


class Relay:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, until told to go silent.

    ``listener`` is a listening socket to accept on instead (for example one made inside a
    network namespace, :meth:`lambda_db_lab.netns.VethNamespace.listen`); the relay owns it.
    Connections upstream are made from the relay's own thread, in the process's namespace.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, listener: socket.socket | None = None
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = listener or socket.create_server(("127.0.0.1", 0))
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        # Held while a chunk crosses: silence() waits for it, so once it returns
        # not one more byte is forwarded.
        self._gate = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(
            target=serve_pairs,
            args=(self._listener, self._upstream, self._closed, self._sockets, self._relay),
            name="relay-accept",
            daemon=True,
        ).start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def silent(self) -> bool:
        """True while nothing is forwarded."""
        return not self._flowing.is_set()

    def silence(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        with self._gate:
            self._flowing.clear()

    def heal(self) -> None:
        """Forward again (what queued while silent is delivered now)."""
        self._flowing.set()

    def close(self) -> None:
        """Stop accepting and close every relayed socket."""
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        self.accepted += 1
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(
                target=self._pump, args=(src, dst), name="relay-pump", daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                if not self._flowing.wait(_POLL_SECONDS):
                    continue
                readable, _, _ = select.select([src], [], [], _POLL_SECONDS)
                if not readable:
                    continue
                with self._gate:
                    if not self._flowing.is_set():
                        continue
                    chunk = src.recv(65536)
                    if not chunk:
                        break
                    dst.sendall(chunk)
        except (OSError, ValueError):  # ValueError: select() on a socket closed under us
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
