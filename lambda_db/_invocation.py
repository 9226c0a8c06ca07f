"""The invocation scope: the connection at first use, one transaction, one deadline.

``@with_connection`` (and ``with db.invocation(context):``) opens a scope. Nothing happens
at the scope's start: no connection, no statement. The handler's first
``get_connection()`` *checks out* the environment's connection (health checks, a reconnect
if needed, inside the connect budget), sets the transaction's characteristics locally and
arms the watchdog at the invocation's cutoff. When the block ends:

* the handler returned: ``COMMIT`` (psycopg2 sent ``BEGIN`` before the first statement):
  what the naive module-level connection sends, and nothing more;
* the handler raised: ``ROLLBACK``, and the exception propagates unchanged;
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
from typing import TYPE_CHECKING, Any, Protocol

from lambda_db._classify import brief, disconnected
from lambda_db._deadline import Deadline, remaining_seconds
from lambda_db._driver import INERROR, Driver
from lambda_db._watchdog import WATCHDOG, Alarm
from lambda_db.errors import (
    ConfigurationError,
    ConnectionLostError,
    DatabaseUnavailableError,
    DeadlineExceededError,
    LambdaDbError,
)

if TYPE_CHECKING:
    from lambda_db.database import Database

__all__ = ["Invocation", "LambdaContext", "check_options"]

logger = logging.getLogger(__name__)


class LambdaContext(Protocol):
    """The part of the Lambda context object we use."""

    def get_remaining_time_in_millis(self) -> int: ...


def check_options(
    autocommit: bool, isolation_level: str | None, readonly: bool | None, deferrable: bool | None
) -> None:
    """Refuse option combinations that cannot be honoured without ``SET``.

    >>> check_options(True, None, None, None)
    >>> check_options(True, "SERIALIZABLE", None, None)
    Traceback (most recent call last):
    lambda_db.errors.ConfigurationError: autocommit=True runs no transaction, ...
    """
    if autocommit and (isolation_level, readonly, deferrable) != (None, None, None):
        raise ConfigurationError(
            "autocommit=True runs no transaction, so isolation_level, readonly and "
            "deferrable cannot apply (psycopg2 would send SET default_transaction_*, "
            "which pins RDS Proxy)",
            variable="autocommit",
        )


class Invocation:
    """One invocation's scope on a :class:`~lambda_db.Database` (a context manager).

    ``autocommit=True`` runs the handler's statements without a transaction (no ``BEGIN``,
    no ``COMMIT``: for single-statement reads); ``isolation_level``, ``readonly`` and
    ``deferrable`` apply to this invocation's transaction only (psycopg2 sends them with
    ``BEGIN``; never as ``SET``, which would pin RDS Proxy), so they cannot be combined with
    ``autocommit``.
    """

    __slots__ = (
        "_alarm",
        "_context",
        "_db",
        "_deadline",
        "_driver",
        "_prepared",
        "_remaining",
        "_started",
        "autocommit",
        "conn",
        "deferrable",
        "isolation_level",
        "readonly",
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
        if autocommit:
            check_options(autocommit, isolation_level, readonly, deferrable)
        self._db = db
        self._context = context
        self.autocommit = autocommit
        self.isolation_level = isolation_level
        self.readonly = readonly
        self.deferrable = deferrable
        #: The checked-out connection (``None`` until the handler first uses it).
        self.conn: Any = None
        self._alarm: Alarm | None = None
        self._driver: Driver | None = None
        self._deadline: Deadline | None = None
        self._prepared = False
        self._started = 0.0
        self._remaining: float | None = None

    # -- entering and leaving ------------------------------------------------------------

    def __enter__(self) -> Invocation:
        db = self._db
        with db._lock:
            if db._scope is not None:
                raise LambdaDbError(
                    "Database.invocation() is not re-entrant: this Database already has an "
                    "invocation in progress (stack with_connection once per Database)"
                )
            self._remaining = remaining_seconds(self._context)
            self._started = db._clock()
            db._scope = self
        db.stats.invocations += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._db
        try:
            if self.conn is not None:
                self._end(exc)
        finally:
            db._scope = None
            if self.conn is not None:
                db._last_used = db._clock()

    # -- the connection -----------------------------------------------------------------

    @property
    def deadline(self) -> Deadline:
        """This invocation's :class:`~lambda_db._deadline.Deadline` (made at first use)."""
        deadline = self._deadline
        if deadline is None:
            db = self._db
            deadline = self._deadline = Deadline.start(
                db.settings, remaining=self._remaining, clock=db._clock, started=self._started
            )
        return deadline

    @property
    def connection(self) -> Any:
        """The invocation's connection, checked out at the first access."""
        conn = self.conn
        return conn if conn is not None else self._checkout()

    def _checkout(self) -> Any:
        db = self._db
        with db._lock:
            if self.conn is not None:
                return self.conn
            deadline = self.deadline
            cutoff = deadline.cutoff
            if cutoff is not None and db._clock() >= cutoff:
                raise DatabaseUnavailableError(
                    "no time left to use the database: the invocation's deadline "
                    f"(DB_DEADLINE_MARGIN/2 = {deadline.margin / 2:.3f} s before the "
                    "function's timeout) has passed",
                    budget=0.0,
                )
            conn = db.acquire(deadline, fresh=True)
            driver = self._driver = db.driver
            self._prepared = driver.prepare(
                conn,
                autocommit=self.autocommit,
                isolation_level=self.isolation_level,
                readonly=self.readonly,
                deferrable=self.deferrable,
            )
            if cutoff is not None:
                transport = db._transport
                assert transport is not None  # set together with the connection
                clock = db._clock
                at = cutoff if clock is time.monotonic else time.monotonic() + (cutoff - clock())
                self._alarm = WATCHDOG.arm(transport, at)
            self.conn = conn
            db.stats.checkouts += 1
            if db.settings.local_statement_timeout and cutoff is not None and not self.autocommit:
                # Opt-in, for direct connections: SET LOCAL pins RDS Proxy.
                driver.set_local_statement_timeout(conn, max(1, int(deadline.left() * 1000)))
            return conn

    # -- the end of the invocation ----------------------------------------------------------

    def _end(self, exc: BaseException | None) -> None:
        db, conn, alarm = self._db, self.conn, self._alarm
        driver = self._driver
        assert driver is not None  # set at checkout, with conn
        try:
            if alarm is not None and alarm.fired:
                raise self._cut(during="a statement") from exc
            if exc is not None:
                if driver.closed(conn) or disconnected(driver.error_info(exc)):
                    raise self._lost(exc, during="the invocation") from exc
                self._rollback(conn)
                return
            cutoff = self._deadline.cutoff if self._deadline is not None else None
            if cutoff is not None and db._clock() >= cutoff:
                raise self._cut(during="the end: the handler returned after the deadline")
            if driver.closed(conn):
                raise self._lost(None, during="the invocation")
            if driver.status(conn) == INERROR:
                # The handler caught a database error and returned: nothing can commit.
                logger.warning(
                    "the handler returned with its transaction aborted by an earlier error; "
                    "rolled back, nothing was committed"
                )
                self._rollback(conn)
                return
            self._commit(conn)
        finally:
            if alarm is not None and WATCHDOG.disarm(alarm) and db._conn is conn:
                # Cut at the cutoff just after the last round trip completed.
                db.discard("the deadline passed as the invocation ended")
            elif self._prepared and db._conn is conn and not driver.closed(conn):
                driver.prepare(
                    conn, autocommit=False, isolation_level=None, readonly=None, deferrable=None
                )

    def _commit(self, conn: Any) -> None:
        db = self._db
        driver = db.driver
        try:
            driver.commit(conn)
        except Exception as exc:
            alarm = self._alarm
            if alarm is not None and alarm.fired:
                raise self._cut(during="COMMIT", outcome_unknown=True) from exc
            if driver.closed(conn) or disconnected(driver.error_info(exc)):
                raise self._lost(exc, during="COMMIT", outcome_unknown=True) from exc
            self._rollback(conn)
            raise
        db.stats.commits += 1

    def _rollback(self, conn: Any) -> None:
        db = self._db
        db.stats.rollbacks += 1
        try:
            db.driver.rollback(conn)
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

    def _cut(self, *, during: str, outcome_unknown: bool = False) -> DeadlineExceededError:
        db = self._db
        db.stats.connections_lost += 1
        db.stats.deadlines_exceeded += 1
        db.emit("DeadlinesExceeded")
        db.discard(f"cut at the invocation's deadline during {during}")
        deadline = self.deadline
        assert deadline.cutoff is not None  # only a Lambda deadline is ever cut
        budget = deadline.cutoff - deadline.started
        outcome = (
            "the outcome of the COMMIT is unknown" if outcome_unknown else "nothing was committed"
        )
        return DeadlineExceededError(
            f"the database had not answered {budget:.2f} s into the invocation, at its "
            f"deadline (DB_DEADLINE_MARGIN/2 = {deadline.margin / 2:.2f} s before the "
            f"function's timeout): lambda-db cut the connection during {during}; {outcome}; "
            "nothing is replayed and the next invocation gets a fresh connection",
            outcome_unknown=outcome_unknown,
            deadline=budget,
        )

    def __repr__(self) -> str:
        state = "checked out" if self.conn is not None else "not using the database"
        return f"<Invocation {state}>"
