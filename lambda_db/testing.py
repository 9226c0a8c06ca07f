"""Test helpers for code that uses lambda-db: a Lambda context object with a real deadline.

Not used by lambda-db at run time, and left out of the Lambda layer. Import it in your own
tests to call a decorated handler the way the Lambda runtime does.

Example::

    >>> from lambda_db.testing import LambdaContext
    >>> context = LambdaContext(timeout=3.0, function_name="orders")
    >>> 2900 < context.get_remaining_time_in_millis() <= 3000
    True
    >>> context.invoked_function_arn
    'arn:aws:lambda:us-east-1:123456789012:function:orders'
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["LambdaContext"]


class LambdaContext:
    """What the Lambda runtime passes as ``context``, counting down from ``timeout`` seconds.

    The attributes are those of the Python runtime's context object (``awslambdaric``):
    ``function_name``, ``function_version``, ``invoked_function_arn``,
    ``memory_limit_in_mb``, ``aws_request_id``, ``log_group_name``, ``log_stream_name``,
    ``identity``, ``client_context`` and ``tenant_id``. ``clock`` is the monotonic clock the
    deadline is measured on (inject a fake one to test deadline arithmetic without waiting).
    """

    def __init__(
        self,
        timeout: float = 3.0,
        *,
        function_name: str = "test-function",
        memory_limit_in_mb: int = 128,
        region: str = "us-east-1",
        account: str = "123456789012",
        aws_request_id: str | None = None,
        tenant_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._deadline = clock() + timeout
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"2026/01/01/[$LATEST]{uuid.uuid4().hex}"
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id = tenant_id

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout, never negative."""
        return max(0, int((self._deadline - self._clock()) * 1000))

    def __repr__(self) -> str:
        return (
            f"<LambdaContext {self.function_name} request {self.aws_request_id} "
            f"{self.get_remaining_time_in_millis()} ms left>"
        )
