"""The invocation scope: the connection at first use, one transaction, one deadline.

``@with_connection`` (and ``with db.invocation(context):``) opens a scope. Nothing happens
at the scope's start: no connection, no statement. The handler's first
``get_connection()`` *checks out* the environment's connection (health checks, a reconnect
if needed, inside the connect budget), sets the transaction's characteristics locally and
arms the watchdog at the invocation's cutoff. When the block ends, :mod:`lambda_db._ending`
commits (psycopg2 sent ``BEGIN`` before the first statement: what the naive module-level
connection sends, and nothing more), rolls back, or raises the typed error that says what
happened (a lost connection, the deadline); a handler that never used the database sends
nothing at all.

Example::

    with db.invocation(context) as scope:
        with scope.connection.cursor() as cur:          # same as db.get_connection()
            cur.execute("UPDATE stock SET n = n - 1 WHERE sku = %s", (sku,))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lambda_db._checks import acquire, healthy
from lambda_db._deadline import Deadline, LambdaContext, remaining_seconds
from lambda_db._ending import leave
from lambda_db._options import Options
from lambda_db._watchdog import arm
from lambda_db.config import DEFAULT_DEADLINE_MARGIN
from lambda_db.errors import DatabaseUnavailableError, LambdaDbError

if TYPE_CHECKING:
    from lambda_db.database import Database

__all__ = ["Invocation", "LambdaContext"]


class Invocation:
    """One invocation's scope on a :class:`~lambda_db.Database` (a context manager).

    ``autocommit=True`` runs the handler's statements without a transaction (no ``BEGIN``,
    no ``COMMIT``: for single-statement reads); ``isolation_level``, ``readonly`` and
    ``deferrable`` apply to this invocation's transaction only (psycopg2 sends them with
    ``BEGIN``; never as ``SET``, which would pin RDS Proxy), so they cannot be combined with
    ``autocommit``.

    The warm path (a healthy cached connection) is written for cost: the invocation
    builds no helper object, and a :class:`~lambda_db._deadline.Deadline` is built only
    when something needs its arithmetic (a reconnect, a ping, an error message).
    """

    __slots__ = (
        "_context",
        "_cutoff",
        "_db",
        "_deadline",
        "_doomed",
        "_ended",
        "_options",
        "_prepared",
        "_remaining",
        "_started",
        "_transport",
        "conn",
        "joined",
    )

    def __init__(self, db: Database, context: Any = None, options: Options | None = None) -> None:
        """``options``: checked by :func:`~lambda_db._options.options_of` (``None``: the
        defaults); ``Database.invocation()`` and ``with_connection`` check them."""
        self._db = db
        self._context = context
        self._options = options
        #: The checked-out connection (``None`` until the handler first uses it).
        self.conn: Any = None
        self._ended = False
        self._deadline: Deadline | None = None
        self._doomed: LambdaDbError | None = None
        #: The SQLAlchemy transactions joined into this invocation's and still open,
        #: innermost last (``lambda_db.sqlalchemy``'s, made at its first one: ``None``).
        self.joined: list[Any] | None = None
        # _started is set by __enter__; _remaining (the time left at the start, None
        # without a context), _cutoff (when the watchdog cuts), _transport (the one armed)
        # and _prepared (characteristics to undo) by _checkout, and read only after it.

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
    def options(self) -> Options | None:
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
        clock = db._clock  # (loaded, then called: see _checks.healthy)
        self._started = clock()  # (before the scope is seen: a checkout reads it)
        lock = db._lock  # an RLock, taken without ``with``: see _checkout
        try:
            lock.acquire()
            if self._ended or db._scope is not None:
                raise _refused(self._ended)
            db._scope = self
        finally:
            try:  # noqa: SIM105 (contextlib.suppress is a with block: the cost avoided)
                lock.release()
            except RuntimeError:
                pass  # acquire() was interrupted as it waited: nothing is held
        db.stats.invocations += 1
        return self

    #: Ending the scope is :mod:`lambda_db._ending`'s: ``COMMIT``, ``ROLLBACK`` or the typed
    #: error (one function, no call of its own: the warm path ends here).
    __exit__ = leave

    # -- the connection -----------------------------------------------------------------

    @property
    def deadline(self) -> Deadline:
        """This invocation's :class:`~lambda_db._deadline.Deadline` (made at first use)."""
        deadline = self._deadline
        if deadline is None:
            db = self._db
            try:
                remaining = self._remaining
            except AttributeError:  # not checked out yet: ask the context
                remaining = remaining_seconds(self._context)
            deadline = self._deadline = Deadline.start(
                db.settings,
                remaining=remaining,
                clock=db._clock,
                started=getattr(self, "_started", None),  # (None: not entered, from now)
            )
        return deadline

    @property
    def connection(self) -> Any:
        """The invocation's connection, checked out at the first access."""
        conn = self.conn
        return conn if conn is not None and not self._ended else self._checkout()

    def _checkout(self) -> Any:
        db = self._db
        lock = db._lock
        try:
            # Not ``with lock:``: on this machine's CPython 3.11.7, timeit measured ``with
            # lock: pass`` at ~260 ns for an RLock, ``lock.acquire(); lock.release()`` at
            # ~115 ns. The acquire() is inside the try, so that an exception raised as it
            # returns (a signal handler's) still releases; an RLock refuses a release by a
            # thread that does not hold it, so an acquire() interrupted while it waited
            # releases nothing (the RuntimeError is ignored: the handler's error goes on).
            lock.acquire()
            if self._ended or db._scope is not self:
                raise LambdaDbError(
                    "the invocation's connection was asked for after the invocation ended (a "
                    "thread the handler started, or a scope kept past its invocation): "
                    "finish database work before the handler returns"
                )
            conn = self.conn
            if conn is not None:  # another thread checked it out first
                return conn
            clock = db._clock
            now = clock()
            settings = db._settings or db.settings
            left_ms = getattr(self._context, "get_remaining_time_in_millis", None)
            if left_ms is None:
                self._remaining = cutoff = None
            else:
                # The time left now: the same Lambda deadline as at the invocation's start.
                left = left_ms() / 1000.0
                remaining = self._remaining = left + (now - self._started)
                margin = settings.deadline_margin
                if margin is None:  # Settings.margin_for, inline: this is the warm path
                    margin = remaining * 0.25
                    if margin > DEFAULT_DEADLINE_MARGIN:
                        margin = DEFAULT_DEADLINE_MARGIN
                cutoff = now + left - margin / 2
                if now >= cutoff:
                    raise DatabaseUnavailableError(
                        "no time left to use the database: the invocation's deadline "
                        f"(DB_DEADLINE_MARGIN/2 = {margin / 2:.3f} s before the function's "
                        "timeout) has passed",
                        budget=cutoff - self._started,
                    )
            self._cutoff = cutoff
            conn = db._conn
            stats = db.stats
            if conn is None or self._options is not None or not healthy(db, conn, now):
                conn = acquire(db, self.deadline, fresh=True)  # the full checks, or a new one
                self._prepared = self._prepare(conn)
            else:
                self._prepared = False
                stats.reuses += 1  # the warm path: nothing to check, nothing to set
            stats.checkouts += 1
            if cutoff is None:
                self._transport = None
            else:
                transport = self._transport = db._transport
                assert transport is not None  # set together with the connection
                arm(transport, cutoff if db._monotonic else db._to_monotonic(cutoff))
                if settings.local_statement_timeout and not self.autocommit:
                    # Opt-in, for direct connections: SET LOCAL pins RDS Proxy.
                    try:
                        ms = max(1, int(self.deadline.left() * 1000))
                        db.driver.set_local_statement_timeout(conn, ms)
                    finally:
                        self.conn = conn  # (failed: the scope's end rolls back what it began)
            self.conn = conn  # last: a scope that sees it set has no checkout in progress
            return conn
        finally:
            try:  # noqa: SIM105 (contextlib.suppress is a with block: the cost avoided)
                lock.release()
            except RuntimeError:
                pass  # acquire() was interrupted as it waited: nothing is held

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

    def __repr__(self) -> str:
        state = "checked out" if self.conn is not None else "not using the database"
        return f"<Invocation {state}>"


def _refused(ended: bool) -> LambdaDbError:
    """The error for a scope entered twice, or while another is in progress."""
    if ended:
        return LambdaDbError(
            "an invocation scope is used once: make a new one for each invocation "
            "(db.invocation(context))"
        )
    return LambdaDbError(
        "Database.invocation() is not re-entrant: this Database already has an invocation "
        "in progress (stack with_connection once per Database)"
    )
