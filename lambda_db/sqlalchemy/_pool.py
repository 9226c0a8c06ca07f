"""A SQLAlchemy pool of one: the :class:`~lambda_db.Database`'s health-checked connection.

SQLAlchemy's pool decides *when* a connection is checked and replaced; here lambda-db
does, so every checkout is ``database.get_connection()``: the zero-round-trip checks
instead of ``pool_pre_ping``, a reconnect with fresh credentials (a new IAM token) inside
the invocation's deadline when the old connection died, and, inside an invocation scope,
the scope's connection and transaction.

SQLAlchemy keeps per-connection state (its ``connect`` events, ``info``, type adapters) in
a pool *entry*. The pool keeps one entry and compares its DB-API connection with the one
lambda-db hands out: when lambda-db opened a new connection (first use, a backend killed
while the environment was frozen, a server restart, ``DB_MAX_AGE``), the old entry is closed
and a new one made for the new connection, so SQLAlchemy's ``connect`` events run for it and
nothing of SQLAlchemy's ever points at a dead connection.

Checkin sends nothing (no reset-on-return ``ROLLBACK``): a transaction left open outside an
invocation scope is rolled back by lambda-db at the next invocation's checkout, with a
warning; inside a scope, the scope ends it.

There is one connection, so there is one checkout at a time, except inside an invocation
scope, where every ``Connection`` and ``Session`` joins the invocation's transaction (the
dialect runs each in its own savepoint: :mod:`lambda_db.sqlalchemy._dialects`). Outside a
scope a second checkout while the first is still out (a ``Connection`` opened inside
another, a ``Session`` used while a ``Connection`` is open) would share the first one's
transaction, and its close would roll the first one's work back: it raises
:class:`~lambda_db.LambdaDbError` instead (a real pool of one would block forever).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from lambda_db.database import Database
from lambda_db.errors import LambdaDbError

__all__ = ["LambdaDbPool"]


class LambdaDbPool(Pool):
    """A :class:`sqlalchemy.pool.Pool` whose one connection is ``database``'s.

    Made by :func:`lambda_db.sqlalchemy.create_engine`; ``engine.pool.database`` is the
    :class:`~lambda_db.Database` behind an engine.
    """

    def __init__(self, database: Database, **kwargs: Any) -> None:
        super().__init__(self._connect, recycle=-1, reset_on_return=None, pre_ping=False, **kwargs)
        self.database = database
        self._entry: ConnectionPoolEntry | None = None
        self._handoff: Any = None
        self._lock = threading.Lock()
        self._checkout_lock = threading.Lock()
        #: The checkouts not yet returned (SQLAlchemy's pool proxies).
        self._out: weakref.WeakSet[PoolProxiedConnection] = weakref.WeakSet()

    def connect(self) -> PoolProxiedConnection:
        """Check the connection out (SQLAlchemy calls this for each ``Connection``).

        Raises :class:`~lambda_db.LambdaDbError` for a second checkout outside an invocation
        scope while the first is still out (see the module docstring).
        """
        with self._checkout_lock:
            if self.database.current is None and any(proxy.is_valid for proxy in self._out):
                raise LambdaDbError(
                    "lambda_db.sqlalchemy's engine has one connection and it is checked out "
                    "(a Connection not yet closed, or a Session in a transaction): outside an "
                    "invocation scope a second Connection or Session would share its "
                    "transaction and could roll it back. Close (or commit) the first one "
                    "before using another, or run both inside @with_session / "
                    "@with_connection, where they join the invocation's one transaction"
                )
            proxy = super().connect()
            self._out.add(proxy)
            return proxy

    def _connect(self, connection_record: ConnectionPoolEntry | None = None) -> Any:
        """The pool's creator: the connection :meth:`_do_get` is making an entry for, else
        (SQLAlchemy reconnecting after it invalidated an entry) lambda-db's current one."""
        conn, self._handoff = self._handoff, None
        return conn if conn is not None else self.database.get_connection()

    def _do_get(self) -> ConnectionPoolEntry:
        conn: Any = self.database.get_connection()
        with self._lock:
            entry = self._entry
            if entry is not None and entry.dbapi_connection is conn:
                return entry
            # lambda-db opened a new connection: SQLAlchemy gets a new entry for it. The old
            # entry's connection was closed by lambda-db when it was replaced.
            self._entry = None
            if entry is not None:
                entry.close()
            self._handoff = conn
            try:
                entry = self._create_connection()  # runs the pool's ``connect`` events
            finally:
                self._handoff = None
            self._entry = entry
            return entry

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        pass  # the entry stays: the next checkout asks lambda-db whether it is still good

    def status(self) -> str:
        return f"LambdaDbPool({self.database!r})"

    def dispose(self) -> None:
        """Close the connection (``engine.dispose()``); lambda-db reopens it at the next use."""
        with self._lock:
            entry, self._entry = self._entry, None
        self.database.close()
        if entry is not None:
            entry.close()  # SQLAlchemy's ``close`` events; the connection is already closed

    def recreate(self) -> LambdaDbPool:
        return type(self)(
            self.database,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )
