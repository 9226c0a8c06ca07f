"""SQLAlchemy's PostgreSQL dialects, for connections an invocation scope may own.

SQLAlchemy assumes a pooled connection is its own to reset: it rolls back when a
``Connection`` or ``Session`` is released, and once, after its first connect, it rolls back
the statements it ran to learn the server (version, schema, isolation level, ``hstore``).
On lambda-db's one connection an invocation scope may own the transaction instead
(``with_connection`` stacked with ``with_session``): those rollbacks would throw the
handler's work away. These subclasses of SQLAlchemy's ``psycopg2`` and ``psycopg`` dialects
change three things and nothing else:

* a rollback SQLAlchemy sends while :func:`releasing` is in force (``with_session`` handing
  its connection back to the scope that will end the transaction) is not sent;
* the rollback after the first connect is not sent when the connection was already in a
  transaction (the handler's own, begun before SQLAlchemy's first use of the engine): the
  learning statements are plain reads and stay inside it;
* the default isolation level is read from ``default_transaction_isolation`` (the server's
  or role's default), not from the transaction in progress, whose level lambda-db may have
  set for this invocation.

What the dialects send at the engine's first connect, checked against the server's log
(``tests/sqlalchemy``): ``select pg_catalog.version()``, ``select current_schema()``,
``SHOW default_transaction_isolation``, ``show standard_conforming_strings`` and psycopg2's
lookup of the ``hstore`` type: reads, none of them on RDS Proxy's pinning list. Later
connections send nothing when they open.

Example::

    >>> from sqlalchemy.engine import URL
    >>> URL.create(DIALECTS["psycopg2"]).get_dialect().__name__
    'Psycopg2Dialect'
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

from lambda_db._driver import IDLE, get_driver

__all__ = ["DIALECTS", "Psycopg2Dialect", "PsycopgDialect", "releasing"]

#: lambda-db's ``DB_DRIVER`` -> the SQLAlchemy driver name (``URL.create(...)``).
DIALECTS = {
    "psycopg2": "postgresql+lambda_db_psycopg2",
    "psycopg": "postgresql+lambda_db_psycopg",
}

_local = threading.local()


@contextlib.contextmanager
def releasing() -> Iterator[None]:
    """Inside the block, this thread's SQLAlchemy rollbacks are not sent.

    For releasing a ``Session`` whose transaction belongs to an invocation scope: the scope
    commits or rolls back when it ends.
    """
    depth = getattr(_local, "releasing", 0)
    _local.releasing = depth + 1
    try:
        yield
    finally:
        _local.releasing = depth


def _raw(connection: Any) -> Any:
    """The DB-API connection behind SQLAlchemy's proxies (or ``connection`` itself)."""
    return getattr(connection, "dbapi_connection", connection)


class _InvocationAware:
    """The three changes, over either driver's dialect (see the module docstring)."""

    #: The DB-API connection whose first-connect rollback must not be sent (it was in a
    #: transaction before SQLAlchemy initialized on it).
    _keep_transaction_of: Any = None

    def initialize(self, connection: Any) -> None:
        raw = _raw(connection.connection)
        in_transaction = get_driver(self.driver).status(raw) != IDLE  # type: ignore[attr-defined]
        super().initialize(connection)  # type: ignore[misc]
        if in_transaction:
            self._keep_transaction_of = raw

    def after_connect(self, dbapi_connection: Any) -> None:
        """Called for each new DB-API connection, after SQLAlchemy's own ``connect`` events."""
        self._keep_transaction_of = None  # the first connect's exemption is used or moot

    def do_rollback(self, dbapi_connection: Any) -> None:
        if getattr(_local, "releasing", 0):
            return
        raw = _raw(dbapi_connection)
        if raw is not None and raw is self._keep_transaction_of:
            self._keep_transaction_of = None
            return
        super().do_rollback(dbapi_connection)  # type: ignore[misc]

    def get_default_isolation_level(self, dbapi_conn: Any) -> str:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SHOW default_transaction_isolation")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return str(row[0]).upper()


class Psycopg2Dialect(_InvocationAware, PGDialect_psycopg2):  # type: ignore[misc]
    """SQLAlchemy's ``postgresql+psycopg2`` dialect, invocation-aware."""

    supports_statement_cache = True


class PsycopgDialect(_InvocationAware, PGDialect_psycopg):  # type: ignore[misc]
    """SQLAlchemy's ``postgresql+psycopg`` (psycopg 3) dialect, invocation-aware.

    SQLAlchemy configures psycopg 3's type adapters (JSON (de)serializers, ``hstore``,
    ``native_inet_types``) as a map it passes to ``psycopg.connect(context=...)``.
    lambda-db opens the connections, so each new one gets a copy of that map here, which
    is what ``connect(context=...)`` itself does with it.
    """

    supports_statement_cache = True

    def after_connect(self, dbapi_connection: Any) -> None:
        super().after_connect(dbapi_connection)
        adapters = self._psycopg_adapters_map
        if adapters is not None:
            from psycopg.adapt import AdaptersMap

            dbapi_connection._adapters = AdaptersMap(adapters)


registry.register(DIALECTS["psycopg2"].replace("+", "."), __name__, "Psycopg2Dialect")
registry.register(DIALECTS["psycopg"].replace("+", "."), __name__, "PsycopgDialect")
