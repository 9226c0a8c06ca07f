"""lambda-db: one health-checked PostgreSQL connection per AWS Lambda execution environment.

See the README for the design; the public API is this list.
"""

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
