"""The errors lambda-db raises.

Every error derives from one root, so ``except LambdaDbError`` catches them all,
and the cause is always chained (``raise ... from exc``)::

    LambdaDbError
    ├── ConfigurationError          a variable or option is missing or invalid
    ├── AuthenticationError         the server refused the credentials
    ├── IdempotencyMismatchError    an idempotency key came back with a different payload
    ├── TransactionOrderError       joined SQLAlchemy transactions ended out of order
    └── DatabaseUnavailableError    no usable connection within the budget: retry later
        ├── ConnectionLimitError    the server, role or database was full (SQLSTATE 53300)
        └── ConnectionLostError     the connection died while the invocation used it
            └── DeadlineExceededError   lambda-db cut it: no answer before the deadline

``DatabaseUnavailableError`` is the "try again later" family: an HTTP API maps it to
``503`` with ``Retry-After``. Messages name what failed, the limit or budget involved and
what to check; they never contain a password, token, secret value or DSN.

Example::

    try:
        conn = lambda_db.get_connection()
    except lambda_db.DatabaseUnavailableError as exc:
        return {"statusCode": 503, "headers": {"Retry-After": "1"}, "body": str(exc)}
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConnectionLimitError",
    "ConnectionLostError",
    "DatabaseUnavailableError",
    "DeadlineExceededError",
    "IdempotencyMismatchError",
    "LambdaDbError",
    "TransactionOrderError",
]


class LambdaDbError(Exception):
    """Root of every error raised by lambda-db."""


class ConfigurationError(LambdaDbError):
    """A configuration value is missing or invalid.

    ``variable`` names the environment variable (or option) at fault, so the
    message can be acted on without reading the code.
    """

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class AuthenticationError(LambdaDbError):
    """The server (or RDS Proxy) refused the credentials, after any refresh we could try."""


class IdempotencyMismatchError(LambdaDbError):
    """An idempotency key arrived again with a different payload (:func:`lambda_db.idempotent`).

    The key's first request committed its result; this one carries other data under the
    same key, so neither replaying that result nor running the handler would be right.
    Nothing was written (the invocation's transaction rolls back). An HTTP API answers
    ``422``: the client reused a key for a different request. ``key`` is the stored record's
    key (the decorated function's name and a hash of the key's value, never the value).
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class TransactionOrderError(LambdaDbError):
    """SQLAlchemy transactions joined into one invocation did not end last-begun-first.

    Inside an invocation scope each ``Connection`` or ``Session`` (but ``with_session``'s
    own) runs in a savepoint of the invocation's one transaction, and PostgreSQL's
    savepoints are a stack: ending one that others opened after it, or rolling back one
    whose range holds another's work, would lose or mis-attribute work. lambda-db sends
    nothing for that end, raises this error and *dooms* the invocation: its scope rolls
    everything back when the handler ends and raises this error again, even if the handler
    caught it (:mod:`lambda_db.sqlalchemy._dialects`).
    """


class DatabaseUnavailableError(LambdaDbError):
    """No usable connection could be had within the time budget.

    ``attempts`` is how many connection attempts were made and ``budget`` the
    time, in seconds, the caller allowed for them.
    """

    def __init__(self, message: str, *, attempts: int = 0, budget: float | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.budget = budget


class ConnectionLimitError(DatabaseUnavailableError):
    """Every attempt met a full server, role or database (SQLSTATE 53300)."""


class ConnectionLostError(DatabaseUnavailableError):
    """The connection was lost while an invocation was using it.

    The invocation fails: lambda-db never replays a statement. The next
    invocation gets a fresh connection. When the loss happened during
    ``COMMIT`` the outcome of the transaction is unknown: ``outcome_unknown`` is
    True and the message says so (an API should not invite a blind retry of a
    non-idempotent request then).
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False, attempts: int = 0) -> None:
        super().__init__(message, attempts=attempts)
        self.outcome_unknown = outcome_unknown


class DeadlineExceededError(ConnectionLostError):
    """The database had not answered when the invocation's deadline came, so lambda-db cut
    the connection (a black-holed network, a hung proxy, a statement that ran too long).

    The invocation ends with this error before Lambda's own timeout, so the function can
    still answer (an API: ``503``). Nothing is replayed; ``outcome_unknown`` is True only
    when the cut fell on ``COMMIT``. ``deadline`` is the budget, in seconds, that the
    invocation had for its statements.
    """

    def __init__(
        self, message: str, *, outcome_unknown: bool = False, deadline: float | None = None
    ) -> None:
        super().__init__(message, outcome_unknown=outcome_unknown)
        self.budget = deadline
        self.deadline = deadline
