"""The connection's socket, seen from beside the driver: poll it, cut it, tune it.

libpq owns the socket; :class:`Transport` holds a duplicate of its descriptor (``dup(2)``:
the same socket, a second handle), made once when the connection opens. Through it
lambda-db can, without a round trip and without the driver's help:

* ask whether anything is waiting to be read on an idle connection (:meth:`readable`): a
  backend the server killed while the environment was frozen leaves EOF or an error
  message there;
* cut the connection from another thread (:meth:`shutdown`): a statement blocked in the
  driver, waiting for an answer that will never come, wakes up with an error at once.

Holding a duplicate keeps the socket open after the driver closes its own descriptor, so
:meth:`close` must be called whenever the connection is discarded (lambda-db does).

Example::

    >>> import socket
    >>> a, b = socket.socketpair()
    >>> t = Transport(a.fileno())
    >>> t.readable()
    False
    >>> b.close()                       # the peer goes away: EOF is waiting
    >>> t.readable()
    True
    >>> t.close(); a.close()
"""

from __future__ import annotations

import contextlib
import os
import select
import socket

__all__ = ["Transport"]

_READ_EVENTS = select.POLLIN | select.POLLERR | select.POLLHUP


class Transport:
    """A duplicate of a connection's socket descriptor."""

    __slots__ = ("__weakref__", "_poller", "_sock", "cut_at", "poll", "was_cut", "watched")

    def __init__(self, fd: int) -> None:
        #: The watchdog's alarm, carried here so that arming allocates nothing: when to cut
        #: (``time.monotonic()``; ``None``: not armed), whether it did, and which watchdog
        #: registered this transport (see :mod:`lambda_db._watchdog`).
        self.cut_at: float | None = None
        self.was_cut = False
        self.watched: object = None
        # socket.socket(fileno=...) detects the family and leaves the descriptor's
        # blocking mode alone (libpq's socket is non-blocking; the flag is shared).
        self._sock = socket.socket(fileno=os.dup(fd))
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), _READ_EVENTS)
        #: The poller's own ``poll`` (``poll(0)``: what :meth:`readable` asks, without its
        #: Python frame, for the warm path; it raises where :meth:`readable` says True).
        self.poll = self._poller.poll

    def readable(self) -> bool:
        """A zero-wait poll: is there anything to read (data, EOF, an error)? No round trip."""
        try:
            return bool(self._poller.poll(0))
        except (OSError, ValueError):
            return True  # a descriptor we cannot poll is not one to trust

    def shutdown(self) -> None:
        """Shut the socket down in both directions: every blocked read or write returns now.

        Safe from any thread; the driver sees a closed connection on its next step.
        """
        with contextlib.suppress(OSError, ValueError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Release the duplicate (the socket closes for real once the driver's is closed too)."""
        with contextlib.suppress(OSError, ValueError):
            self._poller.unregister(self._sock.fileno())
        with contextlib.suppress(OSError):
            self._sock.close()

    def __repr__(self) -> str:
        return f"<Transport fd={self._sock.fileno()}>"
