"""Ctrl-C ends a command that waits for it, whichever thread the kernel hands it to."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A waiting command with a second thread, as ``lambda-db dev`` has lambda-db's watchdog:
# the SIGINT is sent to that thread (``pthread_kill``), which is what Linux may do with a
# Ctrl-C sent to the process. ``wait`` is the waiting under test.
CHILD = """
import signal, sys, threading
from lambda_db.cli._signals import sigterm_interrupts, wait_for_interrupt

idle = threading.Thread(target=threading.Event().wait, daemon=True)
idle.start()
signum = getattr(signal, sys.argv[2])
threading.Timer(0.3, signal.pthread_kill, (idle.ident, signum)).start()
wait = {"wait_for_interrupt": wait_for_interrupt, "pause": signal.pause}[sys.argv[1]]
try:
    with sigterm_interrupts():
        wait()
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def _run(wait: str, signum: str) -> subprocess.CompletedProcess[str] | None:
    """The child's outcome, or ``None`` when it was still waiting after 5 s."""
    try:
        return subprocess.run(
            [sys.executable, "-c", CHILD, wait, signum],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_taken_by_another_thread_still_interrupts_the_wait(signum: str) -> None:
    result = _run("wait_for_interrupt", signum)
    assert result is not None, "the signal went unnoticed"
    assert result.stdout.strip() == "interrupted", result.stderr


def test_signal_pause_sleeps_through_it() -> None:
    """Why ``wait_for_interrupt`` exists: the same child in ``signal.pause()`` hangs."""
    assert _run("pause", "SIGINT") is None
