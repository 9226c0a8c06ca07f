"""SIGTERM as Ctrl-C, for the commands that hold something to clean up.

``timeout 5 lambda-db invoke ...``, ``kill PID`` and a closing terminal send SIGTERM, whose
default action ends Python at once: no ``finally`` block runs, so a command would leave
behind what it started (a PostgreSQL server, a frozen runtime holding a connection).
Within :func:`sigterm_interrupts` SIGTERM raises :class:`KeyboardInterrupt` instead, the
command cleans up as it does on Ctrl-C, and ``main`` exits 130.

:func:`wait_for_interrupt` is what such a command waits in: ``signal.pause()`` can sleep
through the signal it waits for.

Example::

    with sigterm_interrupts():
        wait_for_interrupt()
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

__all__ = ["sigterm_interrupts", "wait_for_interrupt"]

#: How long a signal taken by another thread may wait for the main thread to notice it.
_NOTICE = 0.2


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` (in the main thread; the
    previous handler is put back afterwards). Elsewhere than the main thread, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_interrupt() -> NoReturn:
    """Sleep until Ctrl-C (or SIGTERM, within :func:`sigterm_interrupts`) raises
    ``KeyboardInterrupt``. Main thread only.

    Not ``signal.pause()``: POSIX lets any thread that does not block a process-directed
    signal take it (Linux prefers the main thread, but not always), and then Python's
    C-level handler only notes it; the main thread runs the Python handler at its next
    check, which a main thread in ``pause()`` never reaches (``lambda-db dev`` has a
    second thread, lambda-db's watchdog, once its schema setup ran). CPython's ``pause()``
    also does not look for a signal noted just before it. Short sleeps bound both to a
    fifth of a second.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("wait_for_interrupt() runs in the main thread (signals go there)")
    while True:
        time.sleep(_NOTICE)
