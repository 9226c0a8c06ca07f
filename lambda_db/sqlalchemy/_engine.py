"""``create_engine``: a SQLAlchemy ``Engine`` on a :class:`~lambda_db.Database`."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from lambda_db.database import Database
from lambda_db.errors import ConfigurationError
from lambda_db.handler import default_database
from lambda_db.sqlalchemy._dialects import DIALECTS, OWNER
from lambda_db.sqlalchemy._pool import LambdaDbPool

__all__ = ["create_engine", "database_of", "default_engine", "session_bind"]

#: ``create_engine`` arguments that would take over what lambda-db does, and what to use.
REFUSED = {
    "pool": "lambda-db's pool of one is the engine's pool",
    "poolclass": "lambda-db's pool of one is the engine's pool",
    "creator": "lambda-db opens the connection (settings: DB_* variables or Settings)",
    "async_creator": "lambda-db opens the connection (settings: DB_* variables or Settings)",
    "connect_args": "lambda-db opens the connection (settings: DB_* variables or Settings)",
    "pool_size": "one connection per execution environment is the right size",
    "max_overflow": "one connection per execution environment is the right size",
    "pool_timeout": "connect retries end at the invocation's deadline (DB_DEADLINE_MARGIN)",
    "pool_use_lifo": "there is one connection",
    "pool_pre_ping": "lambda-db checks the connection at checkout without a round trip",
    "pool_recycle": "set DB_MAX_AGE (Settings.max_age) instead",
    "pool_reset_on_return": "the invocation scope ends the transaction; checkin sends nothing",
    "isolation_level": (
        "it would be set on every new connection: use with_session(isolation_level=...) or "
        "with_connection(isolation_level=...), sent with BEGIN"
    ),
    "client_encoding": "it is sent as SET client_encoding, which pins RDS Proxy",
}

_default: tuple[Database, Engine] | None = None
_default_lock = threading.Lock()


def create_engine(database: Database | None = None, **kwargs: Any) -> Engine:
    """A SQLAlchemy :class:`~sqlalchemy.engine.Engine` whose pool is ``database``'s connection.

    ``database`` defaults to :func:`lambda_db.default_database` (configured from the
    ``DB_*`` variables); the SQLAlchemy dialect follows its ``DB_DRIVER`` (``psycopg2`` or
    ``psycopg``). Every checkout is ``database.get_connection()``: health-checked without a
    round trip, reconnected with fresh credentials inside the invocation's deadline, and
    inside ``with_connection``/``with_session`` the invocation's connection and transaction.
    Nothing is sent at checkin.

    Inside an invocation scope every ``Connection`` and ``Session`` on the engine joins the
    invocation's one transaction, which the scope commits when the handler returns. Each
    runs in a savepoint of its own (only ``with_session``'s session, begun first, is the
    invocation's transaction itself): its ``commit()`` sends ``RELEASE SAVEPOINT``, its
    ``rollback()`` or a close without commit ``ROLLBACK TO SAVEPOINT``, undoing its own
    work only. They end in LIFO order of when each began (its first statement): out of
    order, :class:`~lambda_db.TransactionOrderError` and the whole invocation rolls back
    (:mod:`lambda_db.sqlalchemy._dialects`). Outside a scope, SQLAlchemy's own rules
    hold, with one connection: a second ``Connection`` or ``Session`` checked out while the
    first is still out raises :class:`~lambda_db.LambdaDbError`.

    Other keyword arguments go to :func:`sqlalchemy.create_engine` (``echo``,
    ``json_serializer``, ``execution_options`` other than the transaction's
    characteristics, ...); those that would take over lambda-db's job (``pool_pre_ping``,
    ``poolclass``, ``isolation_level``, ...) raise :class:`~lambda_db.ConfigurationError`
    naming the replacement, and so do the ``isolation_level``, ``postgresql_readonly`` and
    ``postgresql_deferrable`` execution options, here or on a ``Connection``: use
    ``with_session(isolation_level=...)`` (or ``with_connection``'s), sent with ``BEGIN``.

    Example::

        from sqlalchemy import text
        from lambda_db.sqlalchemy import create_engine

        engine = create_engine()        # at module level: connects at first use

        def handler(event, context):
            with engine.begin() as conn:
                return conn.execute(text("SELECT count(*) FROM items")).scalar_one()
    """
    for name in kwargs:
        if name in REFUSED:
            raise ConfigurationError(
                f"create_engine({name}=...) is not supported by lambda_db.sqlalchemy: "
                f"{REFUSED[name]}",
                variable=name,
            )
    db = database if database is not None else default_database()
    settings = db.settings
    pool = LambdaDbPool(
        db, echo=kwargs.pop("echo_pool", None), logging_name=kwargs.pop("pool_logging_name", None)
    )
    url = URL.create(
        DIALECTS[settings.driver],
        username=settings.user,
        host=settings.host,
        port=settings.port,
        database=settings.dbname,
    )  # shown by repr(engine); holds no password, and nothing connects with it
    engine = sqlalchemy.create_engine(url, pool=pool, **kwargs)
    dialect: Any = engine.dialect
    dialect.database = db  # whose invocation scopes the engine's transactions join
    event.listen(engine.pool, "connect", _after_connect(engine))  # after SQLAlchemy's own
    owner = engine.execution_options(**{OWNER: True})
    event.listen(owner, "engine_connect", _mark_owner)
    engine._lambda_db_session_bind = owner  # type: ignore[attr-defined]
    return engine


def _mark_owner(connection: Any) -> None:
    connection.connection._lambda_db_owner = True


def session_bind(engine: Engine) -> Engine:
    """What ``with_session`` binds its sessions to: ``engine``, with their connections marked
    as ``with_session``'s (the first transaction in an invocation is the invocation's
    own; ``lambda_db.sqlalchemy._dialects.joined``)."""
    database_of(engine)
    bind: Engine = engine._lambda_db_session_bind  # type: ignore[attr-defined]
    return bind


def _after_connect(engine: Engine) -> Any:
    dialect: Any = engine.dialect

    def after_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dialect.after_connect(dbapi_connection)

    return after_connect


def database_of(engine: Engine) -> Database:
    """The :class:`~lambda_db.Database` behind an engine made by :func:`create_engine`."""
    pool = engine.pool
    if not isinstance(pool, LambdaDbPool):
        raise ConfigurationError(
            f"{engine!r} was not made by lambda_db.sqlalchemy.create_engine: its pool is "
            f"{type(pool).__name__}, which lambda-db cannot scope",
            variable="engine",
        )
    return pool.database


def default_engine() -> Engine:
    """The engine on :func:`lambda_db.default_database` (made at first use, then reused)."""
    global _default
    db = default_database()
    with _default_lock:
        if _default is None or _default[0] is not db:  # lambda_db.reset() made a new one
            _default = (db, create_engine(db))
        return _default[1]
