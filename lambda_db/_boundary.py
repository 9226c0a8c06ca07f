"""Outside ``@with_connection``: where one Lambda invocation ends and the next begins.

``Database.get_connection()`` called outside an invocation scope never sees the handler
return, so it recognises a new invocation by the runtime's per-invocation trace id
(``_X_AMZN_TRACE_ID``, which the runtime sets from ``Lambda-Runtime-Trace-Id`` before each
invocation). A transaction still open when the id changes was left by an earlier
invocation and is rolled back; the current invocation's own transaction never is.
Outside Lambda there is no trace id and one boundary: the process.

Example::

    >>> boundary = Boundary(environ={})
    >>> boundary.crossed(), boundary.crossed()       # outside Lambda: never
    (False, False)
    >>> boundary.environ[TRACE_ID] = "Root=1-6745a1b2-0123456789abcdef01234567"
    >>> boundary.crossed(), boundary.crossed()       # a new invocation, then the same one
    (True, False)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["FUNCTION_NAME", "TRACE_ID", "Boundary"]

logger = logging.getLogger(__name__)

#: Set by the Lambda runtime for each invocation (``Lambda-Runtime-Trace-Id``): outside a
#: scope, a new value means a new invocation.
TRACE_ID = "_X_AMZN_TRACE_ID"
#: Set by the Lambda runtime in every function.
FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"


class Boundary:
    """Tells whether a new invocation has begun since the last :meth:`crossed` (outside
    Lambda, with no trace id, never; in Lambda, the first call says yes)."""

    __slots__ = ("_marker", "_warned", "environ")

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.environ = environ
        self._marker: str | None = None
        self._warned = False

    def crossed(self) -> bool:
        """True when the trace id changed since the last call."""
        marker = self.environ.get(TRACE_ID)
        if marker is None and not self._warned and self.environ.get(FUNCTION_NAME):
            self._warned = True
            logger.warning(
                "running in Lambda without %s: outside @with_connection, get_connection() "
                "cannot tell invocations apart, so a transaction an invocation left open "
                "is not rolled back by the next one; use @with_connection",
                TRACE_ID,
            )
        crossed = marker != self._marker
        self._marker = marker
        return crossed
