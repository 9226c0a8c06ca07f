"""A client-side deadline for statements: the answer to a silent network path.

``statement_timeout`` is enforced by the server, so it cannot help when the server's
answer never arrives (a NAT that dropped the flow, a proxy that stopped forwarding):
a blocking libpq call would wait until Lambda kills the whole environment. psycopg2
lets a *wait callback* do the waiting (:func:`psycopg2.extensions.set_wait_callback`);
ours polls the socket with the invocation's deadline and, when it passes, raises
:class:`ClientDeadlineExceeded`. psycopg2 then marks the connection broken, and the
invocation fails with a typed error inside its own deadline.

The callback is process-wide, so it is installed only while a guarded block runs (a
count shared by all threads) and removed after the last one; it stands aside when
another callback (for example psycogreen's) is already installed. Threads without a
guard of their own wait without a deadline. lambda-db guards its own statements
(connect, ping, the invocation's first statement, COMMIT, ROLLBACK); the handler's
statements only with ``DB_STATEMENT_GUARD=true``, because while the callback is
installed psycopg2 refuses ``COPY`` and large objects, and one connection cannot run
statements from several threads at once. Cost: a few microseconds per statement
(see BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions as ext

__all__ = ["ClientDeadlineExceeded", "deadline_guard"]

_local = threading.local()


class ClientDeadlineExceeded(psycopg2.OperationalError):
    """The server did not answer before the client-side deadline; the connection is dropped."""


def _wait(conn: Any) -> None:
    deadline: float | None = getattr(_local, "deadline", None)
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        if state == ext.POLL_READ:
            events = select.POLLIN
        elif state == ext.POLL_WRITE:
            events = select.POLLOUT
        else:  # pragma: no cover - psycopg2 raises before returning POLL_ERROR
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        poller = select.poll()
        poller.register(conn.fileno(), events | select.POLLERR | select.POLLHUP)
        if deadline is None:
            poller.poll()
            continue
        remaining_ms = (deadline - time.monotonic()) * 1000.0
        if remaining_ms <= 0 or not poller.poll(remaining_ms):
            raise ClientDeadlineExceeded(
                "no answer from the database server before the deadline "
                "(the network path may be silent); the connection was dropped"
            )


_install_lock = threading.Lock()
_guards = 0  # guards active in any thread; the callback stays installed while > 0


@contextlib.contextmanager
def deadline_guard(deadline: float | None) -> Iterator[None]:
    """Bound every libpq wait in this thread by ``deadline`` (a ``time.monotonic()`` value).

    Re-entrant and safe across threads: the callback is installed by the first active
    guard and removed by the last; each thread sees only its own deadline.
    """
    global _guards
    if deadline is None or ext.get_wait_callback() not in (None, _wait):
        yield
        return
    outer = getattr(_local, "deadline", None)
    _local.deadline = deadline if outer is None else min(deadline, outer)
    with _install_lock:
        _guards += 1
        if _guards == 1:
            ext.set_wait_callback(_wait)
    try:
        yield
    finally:
        _local.deadline = outer
        with _install_lock:
            _guards -= 1
            if _guards == 0 and ext.get_wait_callback() is _wait:
                ext.set_wait_callback(None)
