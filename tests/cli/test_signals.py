"""Ctrl-C ends a command that waits for it, whichever thread takes the signal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.interpreter import sigint_restored

# A waiting command with a second thread, as ``lambda-db dev`` has lambda-db's watchdog.
# The signal is sent to that thread (``pthread_kill``), which POSIX allows for a signal
# sent to the process; "sent" is printed once it was. ``wait`` is the waiting under test.
CHILD = """
import signal, sys, threading
from lambda_db.cli._signals import sigterm_interrupts, wait_for_interrupt

idle = threading.Thread(target=threading.Event().wait, daemon=True)
idle.start()
signum = getattr(signal, sys.argv[2])

def send():
    signal.pthread_kill(idle.ident, signum)
    print("sent", flush=True)

wait = {"wait_for_interrupt": wait_for_interrupt, "pause": signal.pause}[sys.argv[1]]
try:
    with sigterm_interrupts():
        threading.Timer(0.5, send).start()
        wait()
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def _run(wait: str, signum: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sigint_restored([sys.executable, "-c", CHILD, wait, signum]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_taken_by_another_thread_still_interrupts_the_wait(signum: str) -> None:
    result = _run("wait_for_interrupt", signum, timeout=30)
    assert result.stdout.split() == ["sent", "interrupted"], result.stderr


def test_signal_pause_sleeps_through_it() -> None:
    """Why ``wait_for_interrupt`` exists: the same child in ``signal.pause()`` is still
    waiting 5 s after the signal was sent."""
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        _run("pause", "SIGINT", timeout=5)
    assert b"sent" in (hung.value.stdout or b"")  # (bytes, whatever text= says)
    assert b"interrupted" not in (hung.value.stdout or b"")
