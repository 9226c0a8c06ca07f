"""botocore's loggers kept quiet while secrets are in flight: :func:`muted_loggers` and
:data:`SENSITIVE_LOGGERS`, the loggers that print signing material or response bodies.

Used while signing an IAM auth token, reading a secret, and reading AWS credentials from
the container endpoint. Imports nothing from botocore.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

__all__ = ["SENSITIVE_LOGGERS", "muted_loggers"]

#: botocore loggers that print signing material (canonical request with the session
#: token, string to sign, signature) or response bodies (a secret's value) at DEBUG;
#: ``botocore.utils`` prints a container credentials answer it cannot parse.
SENSITIVE_LOGGERS = ("botocore.auth", "botocore.parsers", "botocore.endpoint", "botocore.utils")


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
