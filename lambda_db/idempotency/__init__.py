"""Exactly-once effects: idempotency records in PostgreSQL.

* :func:`idempotent` (also ``lambda_db.idempotent``): the record is claimed and stored in
  the invocation's own transaction, atomic with the handler's writes;
* :func:`ensure_schema`: the table it uses (the template's schema setup runs it);
  :func:`delete_expired`: expired records, for a scheduled job (claims delete a few each
  under READ COMMITTED);
* :class:`PostgresPersistenceLayer`: a persistence layer for Powertools' own
  ``@idempotent``, over lambda-db's connection, in transactions of its own (so *not*
  atomic with the handler's writes). Imported on first use: it loads Powertools'
  idempotency package, which ``import lambda_db`` never does.

Example::

    from lambda_db import get_connection, idempotent, with_connection

    @with_connection
    @idempotent("order_id")
    def handler(event, context):
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lambda_db.idempotency._decorator import IdempotencyStats, idempotent, stats
from lambda_db.idempotency._schema import delete_expired, ensure_schema
from lambda_db.idempotency._store import DEFAULT_TABLE

if TYPE_CHECKING:
    from lambda_db.idempotency._powertools import PostgresPersistenceLayer

__all__ = [
    "DEFAULT_TABLE",
    "IdempotencyStats",
    "PostgresPersistenceLayer",
    "delete_expired",
    "ensure_schema",
    "idempotent",
    "stats",
]


if not TYPE_CHECKING:  # (mypy would take a module __getattr__ as "any name exists")

    def __getattr__(name: str) -> Any:
        """``PostgresPersistenceLayer`` is imported at its first use: it loads Powertools'
        idempotency utility."""
        if name == "PostgresPersistenceLayer":
            from lambda_db.idempotency._powertools import PostgresPersistenceLayer

            return PostgresPersistenceLayer
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
