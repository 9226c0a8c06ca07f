"""One health-checked connection per execution environment, handed out per invocation.

:class:`Database` is what a function keeps at module level: the one cached connection (a
Lambda execution environment runs one invocation at a time, so the right pool size is
one), its settings, credentials and counters. An invocation scope
(:mod:`lambda_db._invocation`, opened by ``@with_connection``) checks the connection out at
the handler's first ``get_connection()``; :mod:`lambda_db._checks` decides when it is
checked and replaced, :mod:`lambda_db._link` how.

Example::

    db = Database(Settings(host="localhost", dbname="app", user="app", password="..."))
    with db.invocation(context):               # commit on success, rollback on error
        with db.get_connection().cursor() as cur:   # connects here, at first use
            cur.execute("INSERT INTO events (id) VALUES (%s)", (event_id,))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lambda_db import _lifecycle, _powertools
from lambda_db._backoff import Backoff
from lambda_db._boundary import FUNCTION_NAME, TRACE_ID, Boundary
from lambda_db._checks import acquire, healthy
from lambda_db._credentials import CredentialProvider, make_provider
from lambda_db._deadline import Deadline
from lambda_db._driver import Driver, get_driver
from lambda_db._invocation import Invocation, LambdaContext
from lambda_db._link import close_link
from lambda_db._options import options_of
from lambda_db._socket import Transport
from lambda_db._stats import MetricsSink, Stats
from lambda_db.config import Settings

__all__ = ["FUNCTION_NAME", "TRACE_ID", "Database", "LambdaContext", "Stats"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import psycopg2.extensions

    #: What ``get_connection()`` returns with the default driver (psycopg2).
    Connection = psycopg2.extensions.connection
else:
    Connection = Any


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
        #: The clock is the watchdog's (``time.monotonic``): cutoffs need no conversion.
        self._monotonic = clock is time.monotonic
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._metrics = metrics
        self._conn: Any = None
        self._transport: Transport | None = None
        self._opened_at = 0.0
        self._last_used = 0.0
        #: Outside a scope: where one invocation ends and the next begins.
        self._boundary = Boundary()
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
        options = options_of(autocommit, isolation_level, readonly, deferrable)
        return Invocation(self, context, options)

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
            conn = scope.conn  # (scope.connection, inline: this is the warm path)
            if conn is None or scope._ended:
                conn = scope._checkout()
            return conn  # type: ignore[no-any-return]
        with self._lock:
            scope = self._scope  # a scope may have started since the unlocked look
            if scope is not None:  # (the lock is re-entrant: _checkout takes it too)
                return scope._checkout()  # type: ignore[no-any-return]
            fresh = self._boundary.crossed()
            conn = self._conn
            now = self._clock()
            if conn is not None and healthy(self, conn, now):
                self.stats.reuses += 1  # idle and at the defaults: nothing to roll back
            else:  # the full checks (a leftover rollback, a ping), or a new connection
                deadline = Deadline.start(self.settings, remaining=None, clock=self._clock)
                conn = acquire(self, deadline, fresh=fresh)
                now = self._clock()
            self._last_used = now
            return conn  # type: ignore[no-any-return]

    def _to_monotonic(self, at: float) -> float:
        """``at`` on the injected clock, as a ``time.monotonic()`` time (the watchdog's)."""
        return time.monotonic() + (at - self._clock())

    def discard(self, reason: str) -> None:
        """Close and forget the connection (``reason`` goes to a WARNING)."""
        self._release(
            logging.WARNING, "discarding the connection: %s; the next use reconnects", reason
        )

    def _release(self, level: int, message: str, *args: object) -> None:
        """Close and forget the connection and its transport, logging ``message``."""
        with self._lock:
            conn, self._conn = self._conn, None
            transport, self._transport = self._transport, None
        if conn is not None:
            logger.log(level, message, *args)
            close_link(self.driver, conn, transport)
        elif transport is not None:  # (never set without a connection, but never leaked)
            transport.close()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (it reopens at the next use)."""
        self._release(logging.INFO, "closing the database connection")

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
        if self._metrics is not None:
            self._metrics.add_metric(name=name, unit="Count", value=value)
