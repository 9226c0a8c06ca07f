"""Child processes for tests: code in a fresh interpreter (what an import loads is only
visible in one), and commands that must see a Ctrl-C."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["fresh_python", "sigint_restored"]

#: Puts the signals a terminal leaves at their default back to it (a background job
#: ignores SIGINT and SIGQUIT; Python ignores SIGPIPE and SIGXFSZ and, unlike subprocess,
#: exec does not undo that), then becomes the command (exec keeps them so). ``-I``: no
#: ``signal.py`` from the working directory.
_RESTORE_SIGNALS = (
    "import os, signal, sys\n"
    "for name in ('SIGINT', 'SIGQUIT', 'SIGPIPE', 'SIGXFSZ'):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def fresh_python(code: str) -> str:
    """What ``code`` prints (stripped), run by this interpreter in a new process; a
    failure shows the child's stderr.

    >>> fresh_python("print(6 * 7)")
    '42'
    """
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sigint_restored(argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT (and SIGQUIT, SIGPIPE, SIGXFSZ) at its default, as a command
    typed in a terminal has it.

    A test run started in the background (``make test &``, ``nohup ... &``) ignores
    SIGINT, every child inherits that, and Python then installs no KeyboardInterrupt
    handler: a command under test would never see its Ctrl-C. A shell cannot undo it
    (``trap`` cannot reset a signal ignored on entry), hence this small exec.

    Under a parent that ignores SIGINT, a child has no KeyboardInterrupt, unless:

    >>> ignoring = [sys.executable, "-I", "-c", "import os, signal, sys; "
    ...     "signal.signal(signal.SIGINT, signal.SIG_IGN); os.execvp(sys.argv[1], sys.argv[1:])"]
    >>> code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    >>> child = [sys.executable, "-c", code]
    >>> subprocess.run([*ignoring, *child], capture_output=True).stdout.strip()
    b'False'
    >>> subprocess.run([*ignoring, *sigint_restored(child)], capture_output=True).stdout.strip()
    b'True'
    """
    return [sys.executable, "-I", "-c", _RESTORE_SIGNALS, *argv]
