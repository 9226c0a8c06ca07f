"""The invocation scope: the connection at first use, one transaction, one deadline.

``@with_connection`` (and ``with db.invocation(context):``) opens a scope. Nothing happens
at the scope's start: no connection, no statement. The handler's first
``get_connection()`` *checks out* the environment's connection (health checks, a reconnect
if needed, inside the connect budget), sets the transaction's characteristics locally and
arms the watchdog at the invocation's cutoff. When the block ends:

* the handler returned: ``COMMIT`` (psycopg2 sent ``BEGIN`` before the first statement):
  what the naive module-level connection sends, and nothing more;
* the handler raised: ``ROLLBACK``, and the exception propagates unchanged;
* the invocation was doomed (:meth:`Invocation.doom`: SQLAlchemy transactions ended out of
  order) and the handler caught the error and returned: ``ROLLBACK``, and the error again;
* the connection was lost under the handler: :class:`ConnectionLostError` (nothing is
  replayed); the watchdog cut it at the deadline: :class:`DeadlineExceededError`;
* the deadline has passed: no ``COMMIT`` is sent; the connection is dropped (the server
  rolls back) and :class:`DeadlineExceededError` says nothing was committed;
* the handler never used the database: nothing at all.

Example::

    with db.invocation(context) as scope:
        with scope.connection.cursor() as cur:          # same as db.get_connection()
            cur.execute("UPDATE stock SET n = n - 1 WHERE sku = %s", (sku,))
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lambda_db._classify import brief, disconnected, driver_error
from lambda_db._deadline import Deadline, LambdaContext, remaining_seconds
from lambda_db._driver import CLOSED, INERROR, Driver
from lambda_db._options import check_options
from lambda_db._socket import Transport
from lambda_db._watchdog import WATCHDOG
from lambda_db.config import DEFAULT_DEADLINE_MARGIN
from lambda_db.errors import (
    ConnectionLostError,
    DatabaseUnavailableError,
    DeadlineExceededError,
    LambdaDbError,
)

if TYPE_CHECKING:
    from lambda_db.database import Database

__all__ = ["Invocation", "LambdaContext", "check_options"]

logger = logging.getLogger(__name__)


class Invocation:
    """One invocation's scope on a :class:`~lambda_db.Database` (a context manager).

    ``autocommit=True`` runs the handler's statements without a transaction (no ``BEGIN``,
    no ``COMMIT``: for single-statement reads); ``isolation_level``, ``readonly`` and
    ``deferrable`` apply to this invocation's transaction only (psycopg2 sends them with
    ``BEGIN``; never as ``SET``, which would pin RDS Proxy), so they cannot be combined with
    ``autocommit``.

    The warm path (a healthy cached connection) is written for cost: the invocation
    allocates nothing but itself, and a :class:`~lambda_db._deadline.Deadline` is built
    only when something needs its arithmetic (a reconnect, a ping, an error message).
    """

    __slots__ = (
        "_context",
        "_cutoff",
        "_db",
        "_deadline",
        "_doomed",
        "_driver",
        "_ended",
        "_options",
        "_prepared",
        "_remaining",
        "_started",
        "_transport",
        "conn",
        "joined",
    )

    def __init__(
        self,
        db: Database,
        context: Any = None,
        *,
        autocommit: bool = False,
        isolation_level: str | None = None,
        readonly: bool | None = None,
        deferrable: bool | None = None,
    ) -> None:
        options = None
        if autocommit or isolation_level or readonly is not None or deferrable is not None:
            check_options(autocommit, isolation_level, readonly, deferrable)
            options = (autocommit, isolation_level, readonly, deferrable)
        self._db = db
        self._context = context
        #: ``(autocommit, isolation_level, readonly, deferrable)``, or ``None``: defaults.
        self._options = options
        #: The checked-out connection (``None`` until the handler first uses it).
        self.conn: Any = None
        self._transport: Transport | None = None
        self._driver: Driver | None = None
        self._deadline: Deadline | None = None
        self._cutoff: float | None = None
        self._remaining: float | None = None
        self._prepared = False
        self._started = 0.0
        self._ended = False
        self._doomed: LambdaDbError | None = None
        #: The SQLAlchemy transactions joined into this invocation's and still open,
        #: innermost last (``lambda_db.sqlalchemy``'s, made at its first one: ``None``).
        self.joined: list[Any] | None = None

    @property
    def autocommit(self) -> bool:
        """True when this invocation runs its statements without a transaction."""
        return self._options is not None and self._options[0]

    @property
    def isolation_level(self) -> str | None:
        """This invocation's isolation level (``None``: the server's default)."""
        return None if self._options is None else self._options[1]

    @property
    def readonly(self) -> bool | None:
        """True for a read-only transaction (``None``: the server's default)."""
        return None if self._options is None else self._options[2]

    @property
    def deferrable(self) -> bool | None:
        """True for a deferrable transaction (``None``: the server's default)."""
        return None if self._options is None else self._options[3]

    @property
    def options(self) -> tuple[bool, str | None, bool | None, bool | None] | None:
        """``(autocommit, isolation_level, readonly, deferrable)``, or ``None`` for the
        defaults (a transaction with the server's characteristics)."""
        return self._options

    @property
    def doomed(self) -> LambdaDbError | None:
        """The error that dooms this invocation (see :meth:`doom`), or ``None``."""
        return self._doomed

    def doom(self, error: LambdaDbError) -> LambdaDbError:
        """Make this invocation fail whole, whatever the handler does next.

        For an error after which nothing of the invocation may commit (work already lost
        or mis-attributed, such as :class:`~lambda_db.TransactionOrderError`): the scope
        rolls back when the handler ends and raises ``error`` again, even if the handler
        caught it and returned (an exception the handler raised propagates instead, after
        the same rollback). The first error is kept. Returns ``error``, for ``raise``.
        """
        if self._doomed is None:
            self._doomed = error
        return error

    # -- entering and leaving ------------------------------------------------------------

    def __enter__(self) -> Invocation:
        db = self._db
        with db._lock:
            if self._ended:
                raise LambdaDbError(
                    "an invocation scope is used once: make a new one for each invocation "
                    "(db.invocation(context))"
                )
            if db._scope is not None:
                raise LambdaDbError(
                    "Database.invocation() is not re-entrant: this Database already has an "
                    "invocation in progress (stack with_connection once per Database)"
                )
            db._scope = self
        self._started = db._clock()
        db.stats.invocations += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._db
        with db._lock:  # a checkout in another thread finishes first, and is ended here
            self._ended = True
            conn = self.conn
        try:
            if conn is not None:
                self._end(exc)
        finally:
            with db._lock:
                db._scope = None
                if conn is not None:
                    db._last_used = db._clock()

    # -- the connection -----------------------------------------------------------------

    @property
    def deadline(self) -> Deadline:
        """This invocation's :class:`~lambda_db._deadline.Deadline` (made at first use)."""
        deadline = self._deadline
        if deadline is None:
            db = self._db
            if self._remaining is None:
                self._remaining = remaining_seconds(self._context)
            deadline = self._deadline = Deadline.start(
                db.settings, remaining=self._remaining, clock=db._clock, started=self._started
            )
        return deadline

    @property
    def connection(self) -> Any:
        """The invocation's connection, checked out at the first access."""
        conn = self.conn
        return conn if conn is not None and not self._ended else self._checkout()

    def _checkout(self) -> Any:
        db = self._db
        with db._lock:
            if self._ended or db._scope is not self:
                raise LambdaDbError(
                    "the invocation's connection was asked for after the invocation ended (a "
                    "thread the handler started, or a scope kept past its invocation): "
                    "finish database work before the handler returns"
                )
            if self.conn is not None:  # another thread checked it out first
                return self.conn
            clock = db._clock
            now = clock()
            settings = db._settings or db.settings
            context = self._context
            cutoff = None
            if context is not None and hasattr(context, "get_remaining_time_in_millis"):
                # The time left now: the same Lambda deadline as at the invocation's start.
                left = context.get_remaining_time_in_millis() / 1000.0
                remaining = self._remaining = left + (now - self._started)
                margin = settings.deadline_margin
                if margin is None:  # Settings.margin_for, inline: this is the warm path
                    margin = min(DEFAULT_DEADLINE_MARGIN, remaining * 0.25)
                cutoff = self._cutoff = now + left - margin / 2
                if now >= cutoff:
                    raise DatabaseUnavailableError(
                        "no time left to use the database: the invocation's deadline "
                        f"(DB_DEADLINE_MARGIN/2 = {margin / 2:.3f} s before the function's "
                        "timeout) has passed",
                        budget=cutoff - self._started,
                    )
            options = self._options
            conn = db._conn
            if conn is not None and options is None and db.healthy(conn, now):
                db.stats.reuses += 1  # the warm path: nothing to check, nothing to set
            else:
                conn = db.acquire(self.deadline, fresh=True)  # the full checks, or a new one
                self._prepared = self._prepare(conn)
            driver = self._driver = db._driver
            if cutoff is not None:
                transport = self._transport = db._transport
                assert transport is not None  # set together with the connection
                WATCHDOG.arm(
                    transport,
                    cutoff if clock is time.monotonic else time.monotonic() + (cutoff - now),
                )
            self.conn = conn
            db.stats.checkouts += 1
            if cutoff is not None and settings.local_statement_timeout and not self.autocommit:
                # Opt-in, for direct connections: SET LOCAL pins RDS Proxy.
                assert driver is not None
                driver.set_local_statement_timeout(conn, max(1, int(self.deadline.left() * 1000)))
            return conn

    def _prepare(self, conn: Any) -> bool:
        """Set this invocation's autocommit and characteristics (locally); True if changed."""
        driver = self._db.driver
        options = self._options
        if options is None:
            return driver.prepare_default(conn)
        autocommit, isolation_level, readonly, deferrable = options
        return driver.prepare(
            conn,
            autocommit=autocommit,
            isolation_level=isolation_level,
            readonly=readonly,
            deferrable=deferrable,
        )

    # -- the end of the invocation ----------------------------------------------------------

    def _was_cut(self) -> bool:
        transport = self._transport
        return transport is not None and transport.was_cut

    def _end(self, exc: BaseException | None) -> None:
        db, conn, driver, transport = self._db, self.conn, self._driver, self._transport
        assert driver is not None  # set at checkout, with conn
        try:
            if transport is not None and transport.was_cut:
                # A driver error after the cut (itself, or the cause of what a library such
                # as SQLAlchemy raised): a statement was waiting for the server.
                waiting = driver_error(exc, driver) is not None
                raise self._cut(waiting=waiting) from exc
            if exc is not None:
                if driver.closed(conn) or disconnected(driver_error(exc, driver)):
                    raise self._lost(exc, during="the invocation") from exc
                self._rollback(conn)
                return
            cutoff = self._cutoff
            if cutoff is not None and db._clock() >= cutoff:
                raise self._cut(waiting=False)
            doomed = self._doomed
            if doomed is not None:  # the handler caught an error that forbids any commit
                self._rollback(conn)
                raise doomed
            state = driver.state(conn)
            if state == INERROR:
                # The handler caught a database error and returned: nothing can commit.
                logger.warning(
                    "the handler returned with its transaction aborted by an earlier error; "
                    "rolled back, nothing was committed"
                )
                self._rollback(conn)
                return
            if state == CLOSED:
                raise self._lost(None, during="the invocation")
            if self.joined:  # SQLAlchemy transactions still open, or with_session's session
                self._end_joined(conn)
            try:
                conn.commit()  # DB-API: nothing is sent when no transaction is open
            except Exception as error:
                if self._was_cut():
                    raise self._cut(waiting=True, during="COMMIT") from error
                if driver.closed(conn) or disconnected(driver.error_info(error)):
                    raise self._lost(error, during="COMMIT", outcome_unknown=True) from error
                self._rollback(conn)
                raise
            db.stats.commits += 1
        finally:
            if transport is not None and WATCHDOG.disarm(transport) and db._conn is conn:
                # Cut at the cutoff just after the last round trip completed.
                db.discard("the deadline passed as the invocation ended")
            elif self._prepared and db._conn is conn and not driver.closed(conn):
                driver.prepare_default(conn)

    def _end_joined(self, conn: Any) -> None:
        """Roll back the joined SQLAlchemy transactions the handler left open, as closing
        them would have; raise (having rolled back) when that would undo others' work."""
        from lambda_db.sqlalchemy._dialects import end_left_open  # imported: it made them

        try:
            end_left_open(self, conn)
        except Exception as error:
            driver = self._driver
            assert driver is not None
            if self._was_cut():
                raise self._cut(waiting=True, during="ROLLBACK TO SAVEPOINT") from error
            if driver.closed(conn) or disconnected(driver.error_info(error)):
                raise self._lost(error, during="ROLLBACK TO SAVEPOINT") from error
            self._rollback(conn)
            raise

    def _rollback(self, conn: Any) -> None:
        db = self._db
        if not self.autocommit:
            db.stats.rollbacks += 1
        try:
            conn.rollback()  # DB-API: nothing is sent when no transaction is open
        except Exception as exc:  # noqa: BLE001 (whatever it was, the connection goes)
            # A connection we cannot roll back must not be handed out again.
            db.discard(f"rollback failed ({brief(exc)})")

    def _lost(
        self, exc: BaseException | None, *, during: str, outcome_unknown: bool = False
    ) -> ConnectionLostError:
        db = self._db
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

    def _cut(self, *, waiting: bool, during: str = "a statement") -> DeadlineExceededError:
        """The error for an invocation still running at its cutoff.

        ``waiting``: a statement (or ``during``) was waiting for the server when the
        watchdog cut the connection; otherwise the handler itself was still busy (or
        returned after the cutoff) and the connection was dropped with its transaction.
        """
        db = self._db
        db.stats.deadlines_exceeded += 1
        db.emit("DeadlinesExceeded")
        if waiting:
            db.stats.connections_lost += 1
        db.discard(f"cut at the invocation's deadline ({during if waiting else 'not waiting'})")
        deadline = self.deadline
        budget = (self._cutoff or deadline.connect_by) - deadline.started
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

    def __repr__(self) -> str:
        state = "checked out" if self.conn is not None else "not using the database"
        return f"<Invocation {state}>"
