"""How AWS failures are classified and told: :func:`aws_errors` (what an attempt catches),
:func:`is_transient` (which of them waiting may cure) and :func:`failure_reason` (a short
account of one, never with a secret).

Shared by the two AWS modes. botocore is imported inside the functions only.
"""

from __future__ import annotations

from lambda_db._credentials._budget import BudgetSpent

__all__ = ["TRANSIENT_CODES", "aws_errors", "failure_reason", "is_transient"]

#: AWS error codes that waiting can cure.
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def aws_errors() -> tuple[type[Exception], ...]:
    """What an attempt catches: botocore's errors, AWS's answers, a spent budget, and the
    ``ValueError`` botocore raises for a container credentials URL or token it refuses.
    Anything else is not an AWS failure and propagates unchanged.

    >>> BudgetSpent in aws_errors()
    True
    """
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, BudgetSpent, ValueError)


def is_transient(exc: BaseException) -> bool:
    """True when waiting may cure ``exc`` (a timeout, a refused or reset connection, a
    failed credentials read, throttling, a server error); False for what will not change
    by itself (access denied, no such secret, no region, no credentials).

    >>> from botocore.exceptions import NoRegionError, ReadTimeoutError
    >>> is_transient(ReadTimeoutError(endpoint_url="https://x")), is_transient(NoRegionError())
    (True, False)
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        CredentialRetrievalError,
        HTTPClientError,
        MetadataRetrievalError,
    )

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or int(status or 0) >= 500
    transient = (
        BudgetSpent,
        ConnectionError,
        HTTPClientError,
        CredentialRetrievalError,
        MetadataRetrievalError,
    )
    return isinstance(exc, transient)


def failure_reason(exc: BaseException | None) -> str:
    """A short account of why an AWS call failed: the error code or botocore's message.

    Neither holds a secret: botocore's messages name the URL and what went wrong, and a
    secret's value travels only in a successful answer.

    >>> from botocore.exceptions import ReadTimeoutError
    >>> failure_reason(ReadTimeoutError(endpoint_url="http://127.0.0.1:9/"))
    'ReadTimeoutError: Read timeout on endpoint URL: "http://127.0.0.1:9/"'
    """
    if exc is None:
        return "no attempt could start"
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
