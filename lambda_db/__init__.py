"""lambda-db: one health-checked PostgreSQL connection per AWS Lambda execution environment.

See the README for the design; the public API is this list.
"""

from typing import TYPE_CHECKING, Any

from lambda_db._stats import Stats
from lambda_db.batch import process_batch
from lambda_db.config import Settings
from lambda_db.database import Database
from lambda_db.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLimitError,
    ConnectionLostError,
    DatabaseUnavailableError,
    DeadlineExceededError,
    IdempotencyMismatchError,
    LambdaDbError,
    TransactionOrderError,
)
from lambda_db.handler import default_database, get_connection, reset, with_connection

if TYPE_CHECKING:
    from lambda_db.idempotency import idempotent

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConnectionLimitError",
    "ConnectionLostError",
    "Database",
    "DatabaseUnavailableError",
    "DeadlineExceededError",
    "IdempotencyMismatchError",
    "LambdaDbError",
    "Settings",
    "Stats",
    "TransactionOrderError",
    "default_database",
    "get_connection",
    "idempotent",
    "process_batch",
    "reset",
    "with_connection",
]

__version__ = "0.1.0"


if not TYPE_CHECKING:  # (mypy would take a module __getattr__ as "any name exists")

    def __getattr__(name: str) -> Any:
        """``idempotent`` and the ``idempotency`` package are imported at their first use
        (PEP 562): that package loads hashlib, json and dataclasses, which a function that
        never uses it should not pay for at its cold start. ``from lambda_db import
        idempotent`` and ``lambda_db.idempotency.ensure_schema`` work as before."""
        if name in ("idempotent", "idempotency"):
            import importlib

            package = importlib.import_module("lambda_db.idempotency")  # sets .idempotency
            globals()["idempotent"] = package.idempotent  # (found directly from now on)
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        """The module's names, the lazy ones included."""
        return sorted({*globals(), *__all__, "idempotency"})
