"""The client-side deadline: a timer that cuts a connection still waiting at the cutoff.

``statement_timeout`` is enforced by the server, so it cannot help when the server's answer
never arrives: a black-holed network (a NAT that forgot the flow), a hung proxy that
acknowledges and never answers. Kernel timers do not close the gap either:
``TCP_USER_TIMEOUT`` fires only while sent data is unacknowledged, and a statement waiting
for its answer has nothing in flight; keepalives are acknowledged by a hung peer's kernel.
Only the application knows its deadline.

So during an invocation lambda-db *arms* this watchdog with the connection's
:class:`~lambda_db._socket.Transport` and the invocation's cutoff. One daemon thread per
process sleeps until the earliest armed cutoff; if that alarm is still armed then, it shuts
the socket down. The statement blocked in libpq returns at once with an error, the
invocation raises :class:`~lambda_db.errors.DeadlineExceededError`, and the function still
answers before Lambda's timeout. No wait callback is involved, so ``COPY``, large objects and
statements from several threads work as usual.

Cost on the warm path: :meth:`Watchdog.arm` and :meth:`Watchdog.disarm` take a lock and
touch a list. The thread is woken only when a new alarm is due *before* the time it already
sleeps until; consecutive invocations arm later and later cutoffs, so the thread wakes about
once per function timeout, not once per invocation. Between invocations nothing is armed:
a frozen environment has nothing to fire.

Example::

    >>> import socket, time
    >>> a, b = socket.socketpair()
    >>> from lambda_db._socket import Transport
    >>> dog = Watchdog()
    >>> alarm = dog.arm(Transport(a.fileno()), time.monotonic() + 0.05)
    >>> a.recv(1)                        # blocks until the watchdog shuts the socket down
    b''
    >>> dog.disarm(alarm)                # True: it fired
    True
"""

from __future__ import annotations

import os
import threading
import time

from lambda_db._socket import Transport

__all__ = ["WATCHDOG", "Alarm", "Watchdog"]


class Alarm:
    """One armed deadline: the transport to cut and when (``time.monotonic()`` seconds)."""

    __slots__ = ("at", "fired", "transport")

    def __init__(self, transport: Transport, at: float) -> None:
        self.transport = transport
        self.at = at
        self.fired = False


class Watchdog:
    """Cuts the transports of alarms that are still armed when their time comes."""

    def __init__(self) -> None:
        # The lock is taken directly on the warm path (cheaper than the Condition's
        # __enter__); the Condition shares it for the thread's waits.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._alarms: list[Alarm] = []
        self._thread: threading.Thread | None = None
        #: When the thread will wake up by itself (``None``: not until notified).
        self._wakes_at: float | None = None

    def arm(self, transport: Transport, at: float) -> Alarm:
        """Cut ``transport`` at ``at`` (``time.monotonic()``) unless disarmed before."""
        alarm = Alarm(transport, at)
        with self._lock:
            self._alarms.append(alarm)
            wakes_at = self._wakes_at
            if wakes_at is None or at < wakes_at:
                if self._thread is None:
                    self._start()
                else:
                    self._cond.notify()
        return alarm

    def disarm(self, alarm: Alarm) -> bool:
        """Stop ``alarm``; True when it had already fired (the transport was cut)."""
        with self._lock:
            if alarm.fired:
                return True
            self._alarms.remove(alarm)  # armed and not fired: it is in the list
            return False

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="lambda-db-watchdog", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                due = [a for a in self._alarms if a.at <= now]
                for alarm in due:
                    alarm.fired = True
                    self._alarms.remove(alarm)
                    alarm.transport.shutdown()
                if self._alarms:
                    self._wakes_at = min(a.at for a in self._alarms)
                    self._cond.wait(self._wakes_at - now)
                else:
                    self._wakes_at = None
                    self._cond.wait()

    def _after_fork(self) -> None:
        """In a forked child the thread does not exist: start afresh."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._alarms = []
        self._thread = None
        self._wakes_at = None


#: The process's watchdog (one thread, started at the first alarm).
WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._after_fork)
