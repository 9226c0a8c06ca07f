"""A relay that reads the PostgreSQL protocol and loses a ``COMMIT``: its reply, or itself.

The one failure an idempotency key exists for: the client sent ``COMMIT`` and the
connection died before the answer came back. The transaction may or may not have
committed, and the client cannot tell which. :class:`CommitRelay` makes both cases happen
on demand, between a client and the real server:

* :meth:`CommitRelay.lose_reply`: the next ``COMMIT`` reaches the server; the relay reads
  the server's whole answer (through ``ReadyForQuery``), so the commit has happened, drops
  it, and closes both sides. The client sees a connection closed during ``COMMIT``.
* :meth:`CommitRelay.lose_request`: the next ``COMMIT`` is dropped and both sides are
  closed; the server sees its client vanish mid-transaction and rolls back.

It also counts the simple-protocol queries each connection sent (``statements``), which is
how a benchmark can count round trips without a statement log. It parses only the
frontend's framing (plain TCP: give the client ``sslmode=disable``) and, after an armed
``COMMIT``, the backend's.

Example::

    with CommitRelay("127.0.0.1", pg.port) as relay:
        conn = psycopg2.connect(host=relay.host, port=relay.port, sslmode="disable", ...)
        relay.lose_reply()
        conn.commit()          # psycopg2.OperationalError; the server did commit
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal

from lambda_db_lab.pairs import serve_pairs

__all__ = ["CommitRelay"]

Loss = Literal["reply", "request"]

_PROTOCOL_3 = 196608  # the startup message's protocol version (3.0)
_COMMIT = frozenset({b"COMMIT", b"END", b"COMMIT TRANSACTION", b"COMMIT WORK"})


class CommitRelay:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, losing the next ``COMMIT`` when armed."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: Loss | None = None
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        #: Simple-protocol queries sent, over every connection, in order.
        self.statements: list[str] = []
        #: ``COMMIT``s lost so far, by kind.
        self.lost: list[Loss] = []
        #: Set when an armed ``COMMIT`` has been dealt with (both sides closed).
        self.done = threading.Event()
        threading.Thread(
            target=serve_pairs,
            args=(self._listener, self._upstream, self._closed, self._sockets, self._relay),
            name="commit-relay",
            daemon=True,
        ).start()

    def __enter__(self) -> CommitRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def lose_reply(self) -> None:
        """Forward the next ``COMMIT``, wait for the server's answer, drop it, close."""
        self._arm("reply")

    def lose_request(self) -> None:
        """Drop the next ``COMMIT`` and close: it never reaches the server."""
        self._arm("request")

    def _arm(self, loss: Loss) -> None:
        with self._lock:
            self._armed = loss
            self.done.clear()

    def close(self) -> None:
        """Stop accepting and close every relayed socket."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            _close(sock)

    # -- relaying -------------------------------------------------------------------------

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        link = _Link(client, upstream)
        threading.Thread(target=self._frontend, args=(link,), daemon=True).start()
        threading.Thread(target=self._backend, args=(link,), daemon=True).start()

    def _frontend(self, link: _Link) -> None:
        """Client to server, message by message."""
        client, upstream = link.client, link.upstream
        try:
            started = False
            while True:
                if not started:  # untyped: SSLRequest, GSSENCRequest, CancelRequest, startup
                    head = _read(client, 8)
                    length, code = struct.unpack("!II", head)
                    started = code == _PROTOCOL_3
                    if not started:
                        link.one_byte_answers += 1  # 'S'/'N'/'G' (a cancel gets none: harmless)
                    upstream.sendall(head + _read(client, length - 8))
                    continue
                kind = _read(client, 1)
                (length,) = struct.unpack("!I", _read(client, 4))
                body = _read(client, length - 4)
                if kind == b"Q":
                    text = body.rstrip(b"\0").strip()
                    self.statements.append(text.decode(errors="replace"))
                    loss = self._take(text)
                    if loss == "request":
                        self.lost.append(loss)
                        break  # dropped: close both sides
                    link.swallow = loss == "reply"
                upstream.sendall(kind + struct.pack("!I", length) + body)
        except (OSError, EOFError, struct.error):
            pass
        link.close()
        if self.lost:
            self.done.set()

    def _take(self, text: bytes) -> Loss | None:
        if text.rstrip(b";").strip().upper() not in _COMMIT:
            return None
        with self._lock:
            loss, self._armed = self._armed, None
        return loss

    def _backend(self, link: _Link) -> None:
        """Server to client, message by message; an armed COMMIT's answer is dropped."""
        client, upstream = link.client, link.upstream
        try:
            while True:
                kind = _read(upstream, 1)
                if link.one_byte_answers:  # counted before the request went out
                    client.sendall(kind)
                    link.one_byte_answers -= 1
                    continue
                (length,) = struct.unpack("!I", _read(upstream, 4))
                body = _read(upstream, length - 4)
                if not link.swallow:
                    client.sendall(kind + struct.pack("!I", length) + body)
                elif kind == b"Z":  # ReadyForQuery: the COMMIT is done, its answer dropped
                    self.lost.append("reply")
                    break
        except (OSError, EOFError, struct.error):
            pass
        link.close()
        if self.lost:
            self.done.set()


class _Link:
    """One relayed connection and what its two pumps share."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        #: Single-byte answers the server owes (to SSLRequest / GSSENCRequest).
        self.one_byte_answers = 0
        #: Drop what the server sends from now on (an armed COMMIT was forwarded).
        self.swallow = False

    def close(self) -> None:
        _close(self.client)
        _close(self.upstream)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
