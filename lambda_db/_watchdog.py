"""The client-side deadline: a timer that cuts a connection still waiting at the cutoff.

``statement_timeout`` is enforced by the server, so it cannot help when the server's answer
never arrives: a black-holed network (a NAT that forgot the flow), a hung proxy that
acknowledges and never answers. Kernel timers do not close the gap either:
``TCP_USER_TIMEOUT`` fires only while sent data is unacknowledged, and a statement waiting
for its answer has nothing in flight; keepalives are acknowledged by a hung peer's kernel.
Only the application knows its deadline.

So during an invocation lambda-db *arms* the connection's
:class:`~lambda_db._socket.Transport` with the invocation's cutoff. One daemon thread per
process sleeps until the earliest armed cutoff; if that transport is still armed then, it
shuts the socket down. The statement blocked in libpq returns at once with an error, the
invocation raises :class:`~lambda_db.errors.DeadlineExceededError`, and the function still
answers before Lambda's timeout. No wait callback is involved, so ``COPY``, large objects and
statements from several threads work as usual (but see the psycopg2 connect limit in
:mod:`lambda_db._psycopg2`).

Cost on the warm path: :meth:`Watchdog.arm` sets two attributes of the transport (no
allocation: the transport carries its own alarm) and, in the common case, takes no lock:
it compares its cutoff with the time the thread already sleeps until, and wakes the thread
(under the lock) only when its cutoff is due before that. With nothing armed the thread
sleeps until the latest cutoff it has seen rather than until notified; consecutive
invocations arm later and later cutoffs, so the thread wakes about once per function
timeout, not once per invocation. The lock-free arm is safe because both sides write
before they read: ``arm`` stores the cutoff, then reads when the thread wakes; the thread
stores when it wakes, then looks at every transport again before it sleeps, so one of the
two always sees the other. :meth:`Watchdog.disarm` takes the lock, so that its answer (was
the transport cut?) is exact. (The handshake relies on the GIL ordering each side's
store before its load; a free-threaded build would need a fence there, and lambda-db does
not claim to support one.) Between invocations nothing is armed: a frozen environment
has nothing to fire (its thread, frozen too, wakes on thaw, finds nothing due and sleeps
again).

Example::

    >>> import socket, time
    >>> a, b = socket.socketpair()
    >>> from lambda_db._socket import Transport
    >>> dog, transport = Watchdog(), Transport(a.fileno())
    >>> dog.arm(transport, time.monotonic() + 0.05)
    >>> a.recv(1)                        # blocks until the watchdog shuts the socket down
    b''
    >>> dog.disarm(transport)            # True: it fired
    True
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable

from lambda_db._classify import brief
from lambda_db._socket import Transport

__all__ = ["WATCHDOG", "Watchdog", "arm", "disarm"]


class Watchdog:
    """Cuts the transports that are still armed when their cutoff comes."""

    def __init__(self) -> None:
        # The lock is taken directly on the warm path (cheaper than the Condition's
        # __enter__); the Condition shares it for the thread's waits. An RLock, so that a
        # release() by a thread that does not hold it fails rather than frees it (disarm).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        #: Transports armed at least once and still open (the thread scans these).
        self._transports: weakref.WeakSet[Transport] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        #: When the thread will wake up by itself (``None``: not until notified).
        self._wakes_at: float | None = None
        #: The latest cutoff ever armed.
        self._latest = 0.0
        #: Marks the transports registered with this incarnation (a fork makes a new one).
        self._token = object()

    def arm(self, transport: Transport, at: float) -> None:
        """Cut ``transport`` at ``at`` (``time.monotonic()``) unless disarmed before."""
        transport.was_cut = False
        transport.cut_at = at  # stored before _wakes_at is read: see the module docstring
        if at > self._latest:
            self._latest = at  # (unlocked: a lost update only wakes the thread early)
        wakes_at = self._wakes_at
        if wakes_at is None or at < wakes_at or transport.watched is not self._token:
            self._wake(transport, at)

    def _wake(self, transport: Transport, at: float) -> None:
        """Under the lock: watch ``transport``, and start or wake the thread when ``at`` is
        due before it wakes by itself."""
        with self._lock:
            if transport.watched is not self._token:
                transport.watched = self._token
                self._transports.add(transport)
            wakes_at = self._wakes_at
            if wakes_at is None or at < wakes_at:
                if self._thread is None:
                    self._start()
                else:
                    self._cond.notify()

    def disarm(self, transport: Transport) -> bool:
        """Stop the alarm; True when it had already fired (the transport was cut)."""
        lock = self._lock  # an RLock, taken without ``with``: see Invocation._checkout
        try:
            lock.acquire()
            transport.cut_at = None
            return transport.was_cut
        finally:
            try:  # noqa: SIM105 (contextlib.suppress is a with block: the cost avoided)
                lock.release()
            except RuntimeError:
                pass  # acquire() was interrupted as it waited: nothing is held

    def bounded(
        self,
        transport: Transport,
        action: Callable[[], object],
        seconds: float,
        *,
        lost: Callable[[BaseException], bool],
        why: str,
    ) -> str | None:
        """Run one round trip (``action``) cut after ``seconds``: ``None`` when it went well,
        else why the connection must go (no answer in time, or an error ``lost`` says means
        the link is gone). Any other error propagates."""
        self.arm(transport, time.monotonic() + seconds)
        try:
            action()
        except Exception as exc:
            fired = self.disarm(transport)
            if fired or lost(exc):
                cause = f"no answer in {seconds:.2f} s" if fired else brief(exc)
                return f"{why} failed ({cause})"
            raise
        if self.disarm(transport):
            return f"{why} cut at the deadline"
        return None

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="lambda-db-watchdog", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                earliest = self._scan(now, fire=True)
                if earliest is None and self._latest > now:
                    # Nothing armed, but the invocations that come next arm cutoffs at or
                    # after the latest one seen: sleeping until then, rather than until
                    # notified, spares every one of them a notify and a context switch.
                    earliest = self._latest
                self._wakes_at = earliest
                # An arm() that read the old _wakes_at and so did not notify stored its
                # cutoff before that read: this second look finds it.
                armed = self._scan(now, fire=False)
                if armed is not None and (earliest is None or armed < earliest):
                    continue
                self._cond.wait(None if earliest is None else earliest - now)

    def _scan(self, now: float, *, fire: bool) -> float | None:
        """The earliest cutoff still to come (under the lock); with ``fire``, first cut the
        transports whose cutoff has come."""
        try:
            # Under the lock, but a transport collected in another thread leaves the weak
            # set on its own: should the copy ever fail, look again soon rather than let
            # the thread die (no deadline would fire again).
            transports = list(self._transports)
        except RuntimeError:  # pragma: no cover - not reproduced
            return now + 0.001
        earliest: float | None = None
        for transport in transports:
            at = transport.cut_at
            if at is None:
                continue
            if at <= now:
                if fire:
                    transport.cut_at = None
                    transport.was_cut = True
                    transport.shutdown()
                    continue
                at = now  # due: look again at once
            if earliest is None or at < earliest:
                earliest = at
        return earliest

    def _after_fork(self) -> None:
        """In a forked child the thread does not exist: start afresh."""
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._transports = weakref.WeakSet()
        self._thread = None
        self._wakes_at = None
        self._latest = 0.0
        self._token = object()


#: The process's watchdog (one thread, started at the first alarm).
WATCHDOG = Watchdog()
#: ``WATCHDOG.arm`` and ``WATCHDOG.disarm``, bound once: the warm path calls these (CPython
#: 3.11 compiles ``WATCHDOG.arm(...)`` on an imported name as an attribute load that builds
#: a bound method at every call).
arm, disarm = WATCHDOG.arm, WATCHDOG.disarm
os.register_at_fork(after_in_child=WATCHDOG._after_fork)
