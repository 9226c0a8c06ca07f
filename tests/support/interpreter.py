"""Run code in a fresh interpreter: what an import loads is only visible in one."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["fresh_python"]


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
