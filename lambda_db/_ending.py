"""How an invocation ends: ``COMMIT``, ``ROLLBACK``, or the typed error that says what happened.

:func:`leave` is :class:`~lambda_db._invocation.Invocation`'s ``__exit__``: it decides
*how* the invocation ends. A scope that never checked a connection out sends nothing; for
one that did:

* the handler returned: ``COMMIT`` (psycopg2 sent ``BEGIN`` before the first statement);
* it raised: ``ROLLBACK``, and its exception propagates unchanged;
* it returned with joined SQLAlchemy transactions left open: ``ROLLBACK TO SAVEPOINT``
  for each, as closing them would have (the hook that integration registers), then
  ``COMMIT``;
* it caught an error that dooms the invocation, or returned with its transaction aborted:
  ``ROLLBACK`` (and the dooming error again);
* the connection was lost under it: :class:`~lambda_db.ConnectionLostError`, nothing is
  replayed; the watchdog cut it, or the cutoff has passed: no ``COMMIT`` is sent, the
  connection is dropped (the server rolls back) and
  :class:`~lambda_db.DeadlineExceededError` says what was and was not committed.

Whatever happens, the watchdog is disarmed and a connection that cannot be trusted is
discarded, never handed to the next invocation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lambda_db._classify import brief, disconnected, driver_error
from lambda_db._driver import INERROR, Driver
from lambda_db._watchdog import disarm
from lambda_db.errors import ConnectionLostError, DeadlineExceededError, LambdaDbError

if TYPE_CHECKING:
    from lambda_db._invocation import Invocation
    from lambda_db.database import Database

__all__ = ["leave", "on_left_open"]

logger = logging.getLogger(__name__)

#: Ends the joined transactions a handler left open: registered by the integration that
#: makes them (``lambda_db.sqlalchemy``), so the runtime never imports it.
_left_open: Callable[[Invocation, Any], None] | None = None


def on_left_open(hook: Callable[[Invocation, Any], None]) -> None:
    """Register how to end an invocation's joined transactions left open (``scope.joined``):
    ``hook(scope, conn)`` rolls them back, or raises having doomed the invocation."""
    global _left_open
    _left_open = hook


def leave(
    scope: Invocation,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """``Invocation.__exit__``: end ``scope``; ``exc``: what the handler raised
    (``exc_type`` and ``tb`` are not needed).

    A handler that never used the database: nothing to send. Otherwise ``COMMIT``,
    ``ROLLBACK`` or the typed error, as the module's docstring says. Whatever happens, on
    return or raise, the watchdog is disarmed and the scope is over (``db.current`` is
    ``None``).
    """
    db = scope._db
    try:
        conn = scope.conn
        if conn is None:
            with db._lock:  # a checkout in another thread finishes first, and is ended here
                scope._ended = True
                conn = scope.conn
            if conn is None:
                return
        else:
            scope._ended = True  # (a checkout sets conn last: none is in progress)
        transport = scope._transport
        driver = db._driver
        assert driver is not None  # resolved before the connection was opened
        try:
            clock = db._clock  # (loaded, then called: see _checks.healthy)
            now = db._last_used = clock()  # (idle from now on: the ping's clock)
            if transport is not None and transport.was_cut:
                # A driver error after the cut (itself, or the cause of what a library such
                # as SQLAlchemy raised): a statement was waiting for the server.
                raise cut(scope, waiting=driver_error(exc, driver) is not None) from exc
            if exc is not None:
                if driver.closed(conn) or disconnected(driver_error(exc, driver)):
                    raise lost(db, exc, during="the invocation") from exc
                rollback(scope, conn)
                return
            cutoff = scope._cutoff
            if cutoff is not None and now >= cutoff:
                raise cut(scope, waiting=False)
            doomed = scope._doomed
            if doomed is not None:  # the handler caught an error that forbids any commit
                rollback(scope, conn)
                raise doomed
            status_of = driver.status  # (loaded, then called: see _checks.healthy)
            status = status_of(conn)
            if status >= INERROR:  # (IDLE, ACTIVE, INTRANS below it)
                if status == INERROR:
                    # The handler caught a database error and returned: nothing can commit.
                    logger.warning(
                        "the handler returned with its transaction aborted by an earlier "
                        "error; rolled back, nothing was committed"
                    )
                    rollback(scope, conn)
                    return
                # UNKNOWN: closed or bad (libpq's verdict)
                raise lost(db, None, during="the invocation")
            during = "ROLLBACK TO SAVEPOINT"
            try:
                if scope.joined:  # SQLAlchemy transactions open, or with_session's session
                    _end_left_open(scope, conn)
                during = "COMMIT"
                conn.commit()  # DB-API: nothing is sent when no transaction is open
            except Exception as error:
                typed = _typed(scope, conn, driver, error, during)
                if typed is None:
                    raise
                raise typed from error
            db.stats.commits += 1
        finally:
            if transport is not None and disarm(transport) and db._conn is conn:
                # Cut at the cutoff just after the last round trip completed.
                db.discard("the deadline passed as the invocation ended")
            elif scope._prepared and db._conn is conn and not driver.closed(conn):
                driver.prepare_default(conn)
    finally:
        db._scope = None  # (one store: a get_connection() that sees it then locks)


def _end_left_open(scope: Invocation, conn: Any) -> None:
    """Roll back the joined transactions the handler left open, as closing them would
    have; raise (having rolled back) when that would undo others' work."""
    if _left_open is None:  # pragma: no cover - only the integration that joins fills it
        raise LambdaDbError(
            "the invocation has joined transactions but no integration registered how to "
            "end them (lambda_db._ending.on_left_open)"
        )
    _left_open(scope, conn)


def _typed(
    scope: Invocation,
    conn: Any,
    driver: Driver,
    error: Exception,
    during: str,
) -> LambdaDbError | None:
    """The typed error to raise when ``during`` (after the handler returned) failed with
    ``error``, because the watchdog cut it or the connection was lost (a lost ``COMMIT``'s
    outcome is unknown); else ``None``, having rolled back: ``error`` itself propagates."""
    transport = scope._transport
    if transport is not None and transport.was_cut:
        return cut(scope, waiting=True, during=during)
    if driver.closed(conn) or disconnected(driver.error_info(error)):
        return lost(scope._db, error, during=during, outcome_unknown=during == "COMMIT")
    rollback(scope, conn)
    return None


def rollback(scope: Invocation, conn: Any) -> None:
    """Roll back; a connection that cannot be rolled back is discarded."""
    db = scope._db
    if not scope.autocommit:
        db.stats.rollbacks += 1
    try:
        conn.rollback()  # DB-API: nothing is sent when no transaction is open
    except Exception as exc:  # noqa: BLE001 (whatever it was, the connection goes)
        db.discard(f"rollback failed ({brief(exc)})")


def lost(
    db: Database, exc: BaseException | None, *, during: str, outcome_unknown: bool = False
) -> ConnectionLostError:
    """The error for a connection lost ``during`` something; the connection is discarded."""
    db.stats.connections_lost += 1
    db.emit("ConnectionsLost")
    db.discard(f"lost during {during}")
    outcome = " (the outcome is unknown)" if outcome_unknown else ""
    cause = f": {brief(exc)}" if exc is not None else ""
    return ConnectionLostError(
        f"the database connection was lost during {during}{outcome}{cause}; nothing was "
        "replayed and the next invocation gets a fresh connection",
        outcome_unknown=outcome_unknown,
    )


def cut(scope: Invocation, *, waiting: bool, during: str = "a statement") -> DeadlineExceededError:
    """The error for an invocation still running at its cutoff.

    ``waiting``: a statement (or ``during``) was waiting for the server when the watchdog
    cut the connection; otherwise the handler itself was still busy (or returned after
    the cutoff) and the connection was dropped with its transaction.
    """
    db = scope._db
    db.stats.deadlines_exceeded += 1
    db.emit("DeadlinesExceeded")
    if waiting:
        db.stats.connections_lost += 1
    db.discard(f"cut at the invocation's deadline ({during if waiting else 'not waiting'})")
    deadline = scope.deadline
    budget = (scope._cutoff or deadline.connect_by) - deadline.started
    where = f"DB_DEADLINE_MARGIN/2 = {deadline.margin / 2:.2f} s before the function's timeout"
    commit = during == "COMMIT"
    if waiting:
        what = (
            f"the database had not answered {during} {budget:.2f} s into the invocation, "
            f"at its deadline ({where}): lambda-db cut the connection; "
        )
    else:
        what = (
            f"the invocation was still running {budget:.2f} s in, at its deadline "
            f"({where}), with the database idle: lambda-db dropped the connection; "
        )
    outcome = (
        "the outcome of the COMMIT is unknown"
        if commit
        else "the invocation's open transaction was not committed"
    )
    return DeadlineExceededError(
        f"{what}{outcome}; nothing is replayed and the next invocation gets a fresh connection",
        outcome_unknown=commit,
        deadline=budget,
    )
