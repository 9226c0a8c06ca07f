"""One health-checked connection per execution environment: *when* to check and replace it.

A Lambda execution environment runs one invocation at a time and keeps module state
between them, so the right pool size is one. :class:`Database` holds that connection and
checks it when an invocation first uses it, cheapest first:

1. closed (the driver's verdict; local);
2. transaction status: a transaction left open by an *earlier* invocation is rolled back,
   with a WARNING; the current invocation's own transaction is handed back untouched;
3. age past ``max_age`` (recycle; local);
4. the socket: a zero-wait ``poll`` finds a backend the server killed while the
   environment was frozen (it leaves EOF or an error message to read) with no round trip;
5. ``SELECT 1`` (in autocommit: no transaction) only after ``idle_ping_after`` of idleness.

A connection that fails a check is closed and replaced before anyone sees it. *How* each
check is done is the driver's business (:mod:`lambda_db._driver`, :mod:`lambda_db._socket`);
the invocation scope is :mod:`lambda_db._invocation`.

Example::

    db = Database(Settings(host="localhost", dbname="app", user="app", password="..."))
    with db.invocation(context):               # commit on success, rollback on error
        with db.get_connection().cursor() as cur:   # connects here, at first use
            cur.execute("INSERT INTO events (id) VALUES (%s)", (event_id,))
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lambda_db import _lifecycle, _powertools
from lambda_db._backoff import Backoff
from lambda_db._classify import disconnected
from lambda_db._connect import connect_with_retry
from lambda_db._credentials import CredentialProvider, make_provider
from lambda_db._deadline import Deadline
from lambda_db._driver import ACTIVE, IDLE, INERROR, INTRANS, Driver, get_driver
from lambda_db._invocation import Invocation, LambdaContext
from lambda_db._socket import Transport
from lambda_db._stats import MetricsSink, Stats
from lambda_db._watchdog import WATCHDOG
from lambda_db.config import Settings

__all__ = ["Database", "LambdaContext", "Stats"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import psycopg2.extensions

    #: What ``get_connection()`` returns with the default driver (psycopg2).
    Connection = psycopg2.extensions.connection
else:
    Connection = Any

#: Set by the Lambda runtime for each invocation (``Lambda-Runtime-Trace-Id``): outside a
#: scope, a new value means a new invocation.
TRACE_ID = "_X_AMZN_TRACE_ID"
#: Set by the Lambda runtime in every function.
FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"


class Database:
    """A lazily opened, health-checked connection with bounded connect retries.

    ``settings`` default to :meth:`Settings.from_env` at first use. ``provider``,
    ``clock``, ``sleep`` and ``backoff`` are injectable for tests. ``metrics`` is an
    optional Powertools ``Metrics`` (or anything with ``add_metric``) that receives the
    connect/reconnect/retry counters.

    Example::

        >>> db = Database(Settings(host="localhost", dbname="app", user="app", password="x"))
        >>> db.stats.connects
        0
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        provider: CredentialProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._driver: Driver | None = None
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._metrics = metrics
        self._conn: Any = None
        self._transport: Transport | None = None
        self._opened_at = 0.0
        self._last_used = 0.0
        self._marker: str | None = None
        self._warned_no_trace = False
        #: The invocation scope in progress (set and cleared by :class:`Invocation`).
        self._scope: Invocation | None = None
        self._lock = threading.RLock()
        self.stats = Stats()
        _lifecycle.register(self)
        _powertools.warn_if_hidden()  # once per process: a filter would drop our records

    def __repr__(self) -> str:
        s = self._settings
        where = f"{s.host}:{s.port}/{s.dbname} as {s.user!r} ({s.auth_mode})" if s else "from env"
        state = "closed" if self._conn is None or self.driver.closed(self._conn) else "open"
        return f"<Database {where} {state}>"

    # -- configuration ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force (read from the environment at first use)."""
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def provider(self) -> CredentialProvider:
        """The credential provider for ``settings.auth_mode`` (created at first use)."""
        if self._provider is None:
            self.settings.validate()
            self._provider = make_provider(self.settings)
        return self._provider

    @property
    def driver(self) -> Driver:
        """The driver for ``settings.driver`` (its library imported at first use)."""
        if self._driver is None:
            self._driver = get_driver(self.settings.driver)
        return self._driver

    @property
    def current(self) -> Invocation | None:
        """The invocation scope in progress on this Database, or ``None``.

        For integrations that must join the invocation's transaction rather than start
        their own (``lambda_db.sqlalchemy.with_session`` stacked with ``with_connection``).
        """
        return self._scope

    # -- handing out the connection ------------------------------------------------------

    def invocation(
        self,
        context: LambdaContext | None = None,
        *,
        autocommit: bool = False,
        isolation_level: str | None = None,
        readonly: bool | None = None,
        deferrable: bool | None = None,
    ) -> Invocation:
        """A scope for one invocation: see :class:`~lambda_db._invocation.Invocation`.

        The connection is checked out at the first :meth:`get_connection` inside it (or
        ``scope.connection``); the scope commits when the block ends normally and rolls
        back when it raises.
        """
        return Invocation(
            self,
            context,
            autocommit=autocommit,
            isolation_level=isolation_level,
            readonly=readonly,
            deferrable=deferrable,
        )

    def get_connection(self) -> Connection:
        """The healthy connection, opened or replaced as needed.

        Inside :meth:`invocation` it is the invocation's connection (checked out at the
        first call, then returned as is). Outside, each Lambda invocation is a boundary,
        recognised by the runtime's per-invocation trace id: a transaction left open by an
        earlier invocation is rolled back (with a WARNING), the current invocation's own
        transaction never is. Outside Lambda there is one boundary: the process.
        """
        scope = self._scope
        if scope is not None:
            return scope.connection  # type: ignore[no-any-return]
        with self._lock:
            scope = self._scope  # a scope may have started since the unlocked look
            if scope is not None:  # (the lock is re-entrant: _checkout takes it too)
                return scope._checkout()  # type: ignore[no-any-return]
            marker = os.environ.get(TRACE_ID)
            if marker is None and not self._warned_no_trace and os.environ.get(FUNCTION_NAME):
                self._warned_no_trace = True
                logger.warning(
                    "running in Lambda without %s: outside @with_connection, get_connection() "
                    "cannot tell invocations apart, so a transaction an invocation left open "
                    "is not rolled back by the next one; use @with_connection",
                    TRACE_ID,
                )
            fresh = marker != self._marker
            self._marker = marker
            deadline = Deadline.start(self.settings, remaining=None, clock=self._clock)
            conn = self.acquire(deadline, fresh=fresh)
            self._last_used = self._clock()
            return conn  # type: ignore[no-any-return]

    def healthy(self, conn: Any, now: float) -> bool:
        """The warm path's checks, all local or a zero-wait poll: True when ``conn`` can be
        handed to a new invocation as is. False sends the caller to :meth:`acquire`, which
        looks again and decides (a leftover rollback, a ping, a replacement)."""
        settings = self._settings
        driver = self._driver
        transport = self._transport
        return (
            driver is not None
            and settings is not None
            and transport is not None
            and driver.state(conn) == IDLE  # open, no transaction, the defaults
            and not (settings.max_age and now - self._opened_at >= settings.max_age)
            and now - self._last_used < settings.idle_ping_after
            and not transport.readable()
        )

    def acquire(self, deadline: Deadline, *, fresh: bool) -> Any:
        """The checked connection, or a new one within ``deadline`` (for the scope).

        ``fresh``: a new invocation starts here, so a transaction still open belongs to
        an earlier one and is rolled back.
        """
        conn = self._conn
        if conn is not None:
            reason = self._check(conn, deadline, fresh=fresh)
            if reason is None:
                self.stats.reuses += 1
                return conn
            self._discard(reason)
            self.stats.health_check_failures += 1
            self._emit("HealthCheckFailures")
        return self._open(deadline)

    def _check(self, conn: Any, deadline: Deadline, *, fresh: bool) -> str | None:
        """Why ``conn`` must be replaced, or ``None`` when it is fit to hand out."""
        driver = self._driver
        settings = self._settings
        assert driver is not None and settings is not None  # both resolved before connecting
        if driver.closed(conn):
            return "closed"
        status = driver.status(conn)
        if status != IDLE:
            if status == ACTIVE:
                return None  # a statement is running in another thread: in use, not dead
            if status not in (INTRANS, INERROR):
                return "connection in an unknown state"
            if not fresh:
                return None  # this invocation's own transaction: never touched
            logger.warning(
                "rolling back a transaction an earlier invocation left open on the connection"
            )
            self.stats.leftover_rollbacks += 1
            failed = self._bounded(
                conn, driver.rollback, deadline, why="leftover rollback", no_time="no time left"
            )
            if failed is not None:
                return f"{failed}: the server rolls it back when the connection closes"
        now = self._clock()
        if settings.max_age and now - self._opened_at >= settings.max_age:
            return f"older than max_age ({settings.max_age:g} s)"
        transport = self._transport
        if transport is not None and transport.readable():
            # EOF or an unsolicited message (a FATAL from pg_terminate_backend, a NOTICE):
            # let a ping decide rather than guess.
            return self._ping(conn, deadline, why="socket readable")
        if now - self._last_used >= settings.idle_ping_after:
            return self._ping(conn, deadline, why="idle")
        return None

    def _ping(self, conn: Any, deadline: Deadline, *, why: str) -> str | None:
        """``SELECT 1`` without a transaction; a disconnect or no answer means replace."""

        def ping(conn: Any) -> None:
            self.stats.pings += 1
            self.driver.ping(conn)

        return self._bounded(conn, ping, deadline, why=f"ping after {why}")

    def _bounded(
        self,
        conn: Any,
        action: Callable[[Any], None],
        deadline: Deadline,
        *,
        why: str,
        no_time: str | None = None,
    ) -> str | None:
        """Run one round trip bounded by ``connect_timeout`` and the deadline (the watchdog
        cuts it); a reason to replace the connection, or ``None`` when it went well.

        With no time left the action is skipped and ``no_time`` is the answer (``None``:
        keep the connection unchecked rather than throw a healthy one away).
        """
        wait = min(self.settings.connect_timeout, deadline.left())
        if wait <= 0:
            return None if no_time is None else f"{why} skipped ({no_time})"
        assert self._transport is not None  # set together with the connection
        return WATCHDOG.bounded(
            self._transport, lambda: action(conn), wait, lost=self._lost_link(conn), why=why
        )

    def _lost_link(self, conn: Any) -> Callable[[BaseException], bool]:
        def lost(exc: BaseException) -> bool:
            return self.driver.closed(conn) or disconnected(self.driver.error_info(exc))

        return lost

    def _open(self, deadline: Deadline) -> Any:
        result = connect_with_retry(
            self.settings,
            self.provider,
            self.driver,
            deadline=deadline.connect_by,
            clock=self._clock,
            sleep=self._sleep,
            backoff=self._backoff,
        )
        conn = result.connection
        try:
            transport = Transport(self.driver.fileno(conn))
        except OSError:
            self.driver.close(conn)
            raise
        self._conn, self._transport = conn, transport
        self._opened_at = self._last_used = self._clock()
        self.stats.connects += 1
        self.stats.retries += result.retries
        self.stats.auth_refreshes += int(result.refreshed)
        self._emit("Connects")
        if result.retries:
            self._emit("ConnectRetries", result.retries)
        settings = self.settings
        logger.info(
            "connected to %s:%s/%s as %r in %.1f ms (%d attempt(s), %s auth)",
            settings.host or "(from credentials)", settings.port, settings.dbname,
            self.driver.user(conn), result.seconds * 1000, result.attempts, settings.auth_mode,
        )  # fmt: skip
        return conn

    def discard(self, reason: str) -> None:
        """Close and forget the connection (``reason`` goes to a WARNING)."""
        self._discard(reason)

    def _discard(self, reason: str) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            transport, self._transport = self._transport, None
        if conn is None:
            return
        logger.warning("discarding the connection: %s; the next use reconnects", reason)
        self.driver.close(conn)
        if transport is not None:
            transport.close()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (it reopens at the next use)."""
        with self._lock:
            conn, self._conn = self._conn, None
            transport, self._transport = self._transport, None
        if conn is not None:
            logger.info("closing the database connection")
            self.driver.close(conn)
        if transport is not None:
            transport.close()

    def reseed(self) -> None:
        """Draw a fresh seed for the backoff's jitter (after a SnapStart restore)."""
        self._backoff.reseed()

    def forget_inherited(self) -> Any:
        """In a forked child: drop the parent's connection without closing it (returned, to
        be kept alive) and release this process's duplicate of its socket."""
        self._lock = threading.RLock()
        conn, self._conn, self._scope = self._conn, None, None
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        return conn

    def invalidate_credentials(self) -> None:
        """Forget cached secrets and tokens (after a SnapStart restore)."""
        if self._provider is not None:
            self._provider.invalidate()

    def emit(self, name: str, value: float = 1) -> None:
        """Publish a counter to the metrics sink, when there is one."""
        self._emit(name, value)

    def _emit(self, name: str, value: float = 1) -> None:
        if self._metrics is not None:
            self._metrics.add_metric(name=name, unit="Count", value=value)
