"""``with_session``: one SQLAlchemy ``Session`` per invocation, inside lambda-db's scope.

The decorator opens the :class:`~lambda_db.Database`'s invocation scope itself (the one
``with_connection`` opens), so the session's statements run in the scope's transaction,
under its deadline, and end the way ``with_connection``'s do: the scope sends ``COMMIT``
when the handler returns and ``ROLLBACK`` when it raises, and turns a lost connection or a
cut deadline into :class:`~lambda_db.ConnectionLostError` /
:class:`~lambda_db.DeadlineExceededError` (``outcome_unknown`` when it was the ``COMMIT``).

The session's ``Session`` events fire where SQLAlchemy's own ``session.commit()`` would
fire them: ``before_commit`` (then the final flush) before the scope's ``COMMIT``,
``after_commit`` after it succeeded, ``after_rollback`` after the scope rolled back (not
when the ``COMMIT``'s outcome is unknown: neither fires then). Then the session is closed
without sending anything.

Stacked inside ``with_connection`` (or another ``with_session``) on the same Database, it
joins the scope in progress (``database.current``) instead: ``before_commit`` fires and the
session is flushed when the handler returns, and the outer decorator's scope ends the one
transaction. ``after_commit`` and ``after_rollback`` do not fire then: the outer decorator
commits after this one has returned.

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

from lambda_db._driver import INERROR
from lambda_db._options import check_options
from lambda_db.errors import ConfigurationError
from lambda_db.handler import check_joinable
from lambda_db.sqlalchemy._dialects import releasing
from lambda_db.sqlalchemy._engine import database_of, default_engine, session_bind

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["with_session"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

Options = tuple[bool, str | None, bool | None, bool | None]


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
    * ``isolation_level`` (``"SERIALIZABLE"``, ...; any case), ``readonly``,
      ``deferrable``: for each invocation's transaction, sent with ``BEGIN`` (no ``SET``:
      nothing pins RDS Proxy). Checked when decorating.

    The session is lazy: an invocation that never uses it opens nothing and sends nothing.
    The invocation owns the transaction and commits it once, when the handler returns:
    ``session.commit()`` inside the handler flushes and fires the session's commit events
    but sends no ``COMMIT`` (so an ``@idempotent`` record and the writes it covers commit
    together); ``session.rollback()`` (or a failed flush) rolls back the invocation's
    transaction, or only the session's savepoint when the session began after other work
    in it (``with_connection``'s, or its own committed work). Other ``Connection`` s and
    ``Session`` s on the engine join the same transaction, each in a savepoint
    (:func:`~lambda_db.sqlalchemy.create_engine`); they end in LIFO order of when each
    *began* (its first statement or flush, not when the object was made): commit or close
    the one begun last before an earlier one ends, and before the session rolls back. Out
    of order, or when a rollback (``begin_nested()`` ones too) would undo another's work,
    lambda-db raises :class:`~lambda_db.TransactionOrderError` and the whole invocation
    rolls back, even if the handler catches it. A ``Connection`` or ``Session`` left open
    when the handler returns is rolled back as its close would have (a WARNING). ORM and
    Core
    (``session.execute(text(...))``) both work. The deadline, the typed errors and the one
    connection are ``with_connection``'s; stacked with it on the same Database (either
    order), there is one transaction.

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
    check_options(False, isolation_level, readonly, deferrable)  # at decoration time
    if engine is not None:
        database_of(engine)  # refuse an engine lambda-db cannot scope, at decoration time
    if isolation_level is not None:
        isolation_level = isolation_level.upper()
    options: Options | None = (
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
            session = Session(bind=session_bind(bound))
            kwargs[inject] = session
            joined = db.current
            try:
                if joined is not None:  # with_connection (or with_session) is outside
                    check_joinable(joined, _same(options, joined.options))
                    result = func(event, context, *args, **kwargs)
                    _prepare(session)  # the outer decorator's COMMIT must include it
                    return result
                try:
                    with db.invocation(
                        context,
                        isolation_level=isolation_level,
                        readonly=readonly,
                        deferrable=deferrable,
                    ) as scope:
                        result = func(event, context, *args, **kwargs)
                        prepared = _prepare(session)  # the COMMIT must include what is pending
                        conn = scope.conn
                        committing = conn is None or db.driver.status(conn) != INERROR
                except BaseException as exc:
                    if not getattr(exc, "outcome_unknown", False):
                        _ended(session, committed=False)
                    raise
                _ended(session, committed=prepared and committing)
                return result
            finally:
                with releasing():  # the transaction is, or will be, ended by the scope
                    session.close()

        return wrapper

    return decorate


def _same(options: Options | None, theirs: Options | None) -> Options | None:
    """``options``, or ``None`` when they ask for what the scope being joined has (the
    isolation level compared in any case)."""

    def normal(o: Options | None) -> Options | None:
        return None if o is None else (o[0], o[1].upper() if o[1] else None, o[2], o[3])

    return None if options is None or normal(options) == normal(theirs) else options


def _prepare(session: Session) -> bool:
    """What ``session.commit()`` does before the ``COMMIT``: ``before_commit``, then flush
    until clean (SQLAlchemy's own limit on flushes that make more to flush). True when the
    session has a transaction to commit."""
    transaction = session.get_transaction()
    if transaction is None:
        return False
    if not transaction.is_active:
        logger.warning(
            "the handler returned after a failed flush it caught (its session's transaction "
            "was rolled back); what the session had pending was not committed"
        )
        return False
    transaction._prepare_impl()
    return True


def _ended(session: Session, *, committed: bool) -> None:
    """End the session's transaction the way the scope ended the invocation's, sending
    nothing, so that ``after_commit`` / ``after_rollback`` fire now, after the fact (neither
    fires again for a transaction a failed flush already rolled back)."""
    if session.get_transaction() is None:
        return
    with releasing():
        if committed:
            session.commit()
        else:
            session.rollback()
