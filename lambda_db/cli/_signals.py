"""SIGTERM as Ctrl-C, for the commands that hold something to clean up.

``timeout 5 lambda-db invoke ...``, ``kill PID`` and a closing terminal send SIGTERM, whose
default action ends Python at once: no ``finally`` block runs, so a command would leave
behind what it started (a PostgreSQL server, a frozen runtime holding a connection).
Within :func:`sigterm_interrupts` SIGTERM raises :class:`KeyboardInterrupt` instead, the
command cleans up as it does on Ctrl-C, and ``main`` exits 130.

Example::

    with sigterm_interrupts():
        run_until_interrupted()
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["sigterm_interrupts"]


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
