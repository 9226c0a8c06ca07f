"""Wait for a condition on the server instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_for"]


def wait_for(condition: Callable[[], object], what: str, *, timeout: float = 30.0) -> None:
    """Poll ``condition`` every 10 ms until it is true; ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.01)
