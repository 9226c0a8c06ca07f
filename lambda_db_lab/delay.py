"""A TCP relay that adds a fixed delay each way: a VPC hop and RDS Proxy on one machine.

Loopback round trips take tens of microseconds; in AWS a Lambda function reaches its
database through RDS Proxy in about a millisecond. Measured through this relay, an extra
round trip costs what it costs in production, so a design that sends one statement more
than another shows it in its latency.

Each chunk is forwarded ``one_way`` seconds after it arrived (order kept, no batching), so
a request/response exchange takes ``2 * one_way`` longer than direct.

Example::

    with DelayRelay("127.0.0.1", pg.port, one_way=0.0005) as relay:   # +1 ms per round trip
        conn = psycopg2.connect(host=relay.host, port=relay.port, ...)
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

from lambda_db_lab.pairs import serve_pairs

__all__ = ["DelayRelay"]


class DelayRelay:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, each chunk ``one_way`` seconds late."""

    def __init__(self, upstream_host: str, upstream_port: int, *, one_way: float) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.one_way = one_way
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(
            target=serve_pairs,
            args=(self._listener, self._upstream, self._closed, self._sockets, self._relay),
            name="delay-accept",
            daemon=True,
        ).start()

    def __enter__(self) -> DelayRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and close every relayed socket."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        for src, dst in ((client, upstream), (upstream, client)):
            chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        try:
            while chunk := src.recv(65536):
                chunks.put((time.monotonic() + self.one_way, chunk))
        except OSError:
            pass
        chunks.put((0.0, b""))  # end of stream

    def _write(self, dst: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        try:
            while True:
                due, chunk = chunks.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
