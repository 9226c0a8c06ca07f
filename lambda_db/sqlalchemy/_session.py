"""``with_session``: one SQLAlchemy ``Session`` per invocation, inside lambda-db's scope.

The decorator opens the :class:`~lambda_db.Database`'s invocation scope itself (the one
``with_connection`` opens), so the session's statements run in the scope's transaction,
under its deadline, and end the way ``with_connection``'s do: the scope sends ``COMMIT``
when the handler returns and ``ROLLBACK`` when it raises, and turns a lost connection or a
cut deadline into :class:`~lambda_db.ConnectionLostError` /
:class:`~lambda_db.DeadlineExceededError` (``outcome_unknown`` when it was the ``COMMIT``).
Before the scope ends, the session is flushed (pending ORM changes are sent); after, it is
closed without sending anything.

Stacked inside ``with_connection`` (or another ``with_session``) on the same Database, it
joins the scope in progress (``database.current``) instead: the session is flushed and
released, and the outer decorator's scope ends the one transaction.

Example::

    @with_session
    def handler(event, context, session):
        session.add(Order(sku=event["sku"]))
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from sqlalchemy.engine import Engine

from lambda_db.errors import ConfigurationError
from lambda_db.handler import check_joinable
from lambda_db.sqlalchemy._dialects import releasing
from lambda_db.sqlalchemy._engine import database_of, default_engine

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["with_session"]

logger = logging.getLogger(__name__)

R = TypeVar("R")


@overload
def with_session(engine: Callable[..., R], /) -> Callable[..., R]: ...


@overload
def with_session(
    engine: Engine | None = None,
    /,
    *,
    inject: str = "session",
    isolation_level: str | None = None,
    readonly: bool | None = None,
    deferrable: bool | None = None,
) -> Callable[[Callable[..., R]], Callable[..., R]]: ...


def with_session(
    engine: Engine | Callable[..., Any] | None = None,
    /,
    *,
    inject: str = "session",
    isolation_level: str | None = None,
    readonly: bool | None = None,
    deferrable: bool | None = None,
) -> Any:
    """Give each invocation a SQLAlchemy ``Session``: commit on return, roll back on raise.

    Works bare (``@with_session``) or with options (``@with_session(engine, inject="db")``):

    * ``engine``: an engine from :func:`~lambda_db.sqlalchemy.create_engine` (default: one
      on :func:`lambda_db.default_database`, made at first use);
    * ``inject``: the keyword argument the session is passed as (``"session"``);
    * ``isolation_level`` (``"SERIALIZABLE"``, ...), ``readonly``, ``deferrable``: for
      each invocation's transaction, sent with ``BEGIN`` (no ``SET``: nothing pins RDS
      Proxy).

    The session is lazy: an invocation that never uses it opens nothing and sends nothing.
    ``session.commit()`` and ``session.rollback()`` inside the handler act at once, as in
    any SQLAlchemy code; what is pending when the handler returns is flushed and committed
    by the invocation scope. ORM and Core (``session.execute(text(...))``) both work. The
    deadline, the typed errors and the one connection are ``with_connection``'s; stacked
    with it on the same Database (either order), there is one transaction.

    Example::

        from lambda_db.sqlalchemy import with_session

        @logger.inject_lambda_context
        @with_session
        def handler(event, context, session):
            session.add(Order(sku=event["sku"], quantity=event["quantity"]))
            return {"statusCode": 201}
    """
    if callable(engine) and not isinstance(engine, Engine):
        return with_session()(engine)  # bare: @with_session
    if engine is not None and not isinstance(engine, Engine):
        raise ConfigurationError(
            f"with_session(engine) takes an engine from lambda_db.sqlalchemy.create_engine, "
            f"got {type(engine).__name__}",
            variable="engine",
        )
    if not (isinstance(inject, str) and inject.isidentifier()):
        raise ConfigurationError(
            f"inject is the keyword argument the session is passed as, got {inject!r}",
            variable="inject",
        )
    if engine is not None:
        database_of(engine)  # refuse an engine lambda-db cannot scope, at decoration time
    options = (
        None
        if (isolation_level, readonly, deferrable) == (None, None, None)
        else (False, isolation_level, readonly, deferrable)
    )
    from sqlalchemy.orm import Session  # ~30 ms: paid by handlers that use sessions only

    def decorate(func: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(func)
        def wrapper(event: Any, context: Any, *args: Any, **kwargs: Any) -> R:
            bound = engine if engine is not None else default_engine()
            db = database_of(bound)
            session = Session(bind=bound)
            kwargs[inject] = session
            scope = db.current
            try:
                if scope is not None:  # with_connection (or with_session) is outside
                    check_joinable(scope, options)
                    result = func(event, context, *args, **kwargs)
                    session.flush()
                    return result
                with db.invocation(
                    context,
                    isolation_level=isolation_level,
                    readonly=readonly,
                    deferrable=deferrable,
                ):
                    result = func(event, context, *args, **kwargs)
                    session.flush()  # the scope's COMMIT must include what is pending
                return result
            finally:
                _release(session)

        return wrapper

    return decorate


def _release(session: Session) -> None:
    """Close ``session`` without a round trip: its transaction was, or will be, ended by the
    invocation scope (the rollback SQLAlchemy sends when a session closes is withheld)."""
    with releasing():
        session.close()
