"""What the two AWS modes share: botocore loggers kept quiet while secrets are in flight.

Nothing here imports botocore at module level: ``import lambda_db`` stays free of AWS
libraries, and each mode pays for botocore on its first fetch or mint.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

__all__ = ["SENSITIVE_LOGGERS", "muted_loggers"]

#: botocore loggers that print signing material (canonical request with the session
#: token, string to sign, signature) or response bodies (a secret's value) at DEBUG.
SENSITIVE_LOGGERS = ("botocore.auth", "botocore.parsers", "botocore.endpoint")


class _MuteFilter(logging.Filter):
    """Drops every record while the current thread is inside :func:`muted_loggers`."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "depth", 0)


_MUTE = _MuteFilter()


@contextlib.contextmanager
def muted_loggers(*names: str) -> Iterator[None]:
    """Silence the named loggers in this thread for the duration of the block.

    botocore logs the canonical request (with ``X-Amz-Security-Token``) and the
    signature from ``botocore.auth``, and every response body from ``botocore.parsers``,
    at DEBUG. Signing a token or reading a secret must not end up in a log, whatever
    level the function runs at. Other threads and other loggers are unaffected.

    Example::

        >>> with muted_loggers("botocore.parsers"):
        ...     logging.getLogger("botocore.parsers").warning("not shown")
    """
    for name in names:
        target = logging.getLogger(name)
        if _MUTE not in target.filters:
            target.addFilter(_MUTE)
    local = _MUTE.local
    local.depth = getattr(local, "depth", 0) + 1
    try:
        yield
    finally:
        local.depth -= 1
