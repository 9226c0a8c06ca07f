"""One health-checked connection per execution environment, and the invocation scope.

A Lambda execution environment runs one invocation at a time and keeps module state
between them, so the right pool size is one. :class:`Database` holds that connection and
checks it on every :meth:`~Database.get_connection`, cheapest first:

1. ``conn.closed`` (local state);
2. transaction status: a connection busy in another thread is handed out as is; a
   transaction left open by an earlier caller is rolled back, with a WARNING;
3. age past ``max_age`` (recycle; local);
4. the socket: a zero-wait ``poll`` finds a backend the server killed while we were
   frozen (it leaves EOF or an error message to read) with no round trip;
5. ``SELECT 1`` only when the connection has been idle longer than ``idle_ping_after``.

A connection that fails a check is closed and replaced before anyone sees it.

Example::

    db = Database(Settings(host="localhost", dbname="app", user="app", password="..."))
    with db.invocation(context) as conn:       # commit on success, rollback on error
        with conn.cursor() as cur:
            cur.execute("INSERT INTO events (id) VALUES (%s)", (event_id,))
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import (
    TRANSACTION_STATUS_ACTIVE,
    TRANSACTION_STATUS_IDLE,
    TRANSACTION_STATUS_INERROR,
    TRANSACTION_STATUS_INTRANS,
)

from lambda_db import _snapstart
from lambda_db._backoff import Backoff
from lambda_db._classify import is_disconnect
from lambda_db._connect import connect_with_retry
from lambda_db._credentials import CredentialProvider, make_provider
from lambda_db._watchdog import deadline_guard
from lambda_db.config import Settings
from lambda_db.errors import ConnectionLostError, DatabaseUnavailableError, LambdaDbError

__all__ = ["Database", "LambdaContext", "Stats"]

logger = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection

#: ``set_session`` value meaning "the server's default".
DEFAULT: Final = "default"


class LambdaContext(Protocol):
    """The part of the Lambda context object we use."""

    def get_remaining_time_in_millis(self) -> int: ...


class MetricsSink(Protocol):
    """What we need of Powertools ``Metrics`` (``add_metric(name=..., unit=..., value=...)``)."""

    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class Stats:
    """Counters: the stable interface for what happened (log text is not).

    ``connects`` counts connections opened, ``reuses`` warm hand-outs of an existing
    one, ``health_check_failures`` connections found dead or too old and replaced,
    ``pings`` idle-threshold round trips, ``retries`` waits between connect attempts,
    ``auth_refreshes`` credential refreshes after an authentication failure,
    ``leftover_rollbacks`` transactions found open at hand-out, ``invocations``,
    ``commits`` and ``rollbacks`` invocation outcomes, ``connections_lost`` invocations
    whose connection died under them.

    >>> Stats().as_dict()["connects"]
    0
    """

    __slots__ = (
        "auth_refreshes",
        "commits",
        "connections_lost",
        "connects",
        "health_check_failures",
        "invocations",
        "leftover_rollbacks",
        "pings",
        "retries",
        "reuses",
        "rollbacks",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    connects: int
    reuses: int
    health_check_failures: int
    pings: int
    retries: int
    auth_refreshes: int
    leftover_rollbacks: int
    invocations: int
    commits: int
    rollbacks: int
    connections_lost: int

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and metrics)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return "Stats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


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
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._metrics = metrics
        self._conn: Connection | None = None
        self._opened_at = 0.0
        self._last_used = 0.0
        self._in_invocation = False
        self._lock = threading.RLock()
        self.stats = Stats()
        _INSTANCES.add(self)
        _snapstart.register_hooks(_before_snapshot, _after_restore)

    def __repr__(self) -> str:
        s = self._settings
        where = f"{s.host}:{s.port}/{s.dbname} as {s.user!r} ({s.auth_mode})" if s else "from env"
        state = "open" if self._conn is not None and not self._conn.closed else "closed"
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

    # -- the warm path -----------------------------------------------------------------

    def get_connection(self, *, deadline: float | None = None) -> Connection:
        """The healthy connection, opened or replaced as needed.

        Inside :meth:`invocation` this returns the invocation's connection as is. Outside,
        it runs the health checks; ``deadline`` (a value of the ``clock``) bounds any
        ping and reconnect, defaulting to ``connect_budget`` seconds from now.

        Outside an invocation, a call is an invocation boundary: a transaction still open
        on the connection is rolled back (with a WARNING). Without ``@with_connection``,
        call it once at the start of the handler and pass the connection down.
        """
        with self._lock:
            conn = self._conn
            if self._in_invocation and conn is not None:
                return conn
            now = self._clock()
            if deadline is None:
                deadline = now + self.settings.connect_budget
            if conn is not None:
                reason = self._check(conn, now, deadline)
                if reason is None:
                    self.stats.reuses += 1
                    self._last_used = now
                    return conn
                self._discard(reason)
                self.stats.health_check_failures += 1
                self._emit("HealthCheckFailures")
            return self._open(deadline)

    def _check(self, conn: Connection, now: float, deadline: float) -> str | None:
        """Why ``conn`` must be replaced, or ``None`` when it is fit to hand out."""
        if conn.closed:
            return "closed"
        status = conn.info.transaction_status
        if status == TRANSACTION_STATUS_ACTIVE:
            return None  # a statement is running in another thread: it is in use, not dead
        if status in (TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR):
            logger.warning(
                "rolling back a transaction left open on the connection: outside "
                "@with_connection, get_connection() starts a new invocation's work"
            )
            self.stats.leftover_rollbacks += 1
            try:
                conn.rollback()
            except psycopg2.Error as exc:
                return f"rollback of a leftover transaction failed ({_brief(exc)})"
        elif status != TRANSACTION_STATUS_IDLE:
            return "connection in an unknown state"
        settings = self.settings
        if settings.max_age and now - self._opened_at >= settings.max_age:
            return f"older than max_age ({settings.max_age:g} s)"
        if _socket_readable(conn):
            # EOF or an unsolicited message (a FATAL from pg_terminate_backend, a NOTICE):
            # let a ping decide rather than guess.
            return self._ping(conn, why="socket readable", budget=deadline - now)
        if now - self._last_used >= settings.idle_ping_after:
            return self._ping(conn, why="idle", budget=deadline - now)
        return None

    def _ping(self, conn: Connection, *, why: str, budget: float) -> str | None:
        """``SELECT 1`` in autocommit (no transaction opened); a disconnect means replace.

        The ping waits at most ``connect_timeout`` and never past the caller's deadline;
        with no budget left it is skipped (a healthy connection is not thrown away).
        """
        wait = min(self.settings.connect_timeout, budget)
        if wait <= 0:
            return None
        self.stats.pings += 1
        autocommit = conn.autocommit
        try:
            conn.autocommit = True
            with deadline_guard(time.monotonic() + wait), conn.cursor() as cur:
                cur.execute("SELECT 1")
        except psycopg2.Error as exc:
            if is_disconnect(exc, conn):
                return f"ping after {why} failed ({_brief(exc)})"
            raise
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
        return None

    def _open(self, deadline: float) -> Connection:
        result = connect_with_retry(
            self.settings,
            self.provider,
            deadline=deadline,
            clock=self._clock,
            sleep=self._sleep,
            backoff=self._backoff,
        )
        self.stats.connects += 1
        self.stats.retries += result.retries
        self.stats.auth_refreshes += int(result.refreshed)
        self._emit("Connects")
        if result.retries:
            self._emit("ConnectRetries", result.retries)
        self._conn = result.connection
        self._opened_at = self._last_used = self._clock()
        logger.info(
            "connected to %s:%s/%s as %r in %.1f ms (%d attempt(s), %s auth)",
            self.settings.host or "(from credentials)", self.settings.port, self.settings.dbname,
            self._conn.info.user, result.seconds * 1000, result.attempts, self.settings.auth_mode,
        )  # fmt: skip
        return self._conn

    def _discard(self, reason: str) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        logger.warning("discarding the connection: %s; reconnecting", reason)
        with contextlib.suppress(Exception):
            conn.close()

    # -- the invocation scope ---------------------------------------------------------

    @contextlib.contextmanager
    def invocation(
        self,
        context: LambdaContext | None = None,
        *,
        isolation_level: str | int | None = None,
        readonly: bool | None = None,
        deferrable: bool | None = None,
    ) -> Iterator[Connection]:
        """Scope one invocation's transaction on the cached connection.

        Commits when the block ends normally, rolls back when it raises (the exception
        propagates). With a Lambda ``context``, the connect budget and a transaction-local
        ``statement_timeout`` end the deadline margin before the function's own
        timeout (measured after connecting, so retries shorten it). A connection lost
        inside the block fails the invocation with :class:`ConnectionLostError`; nothing
        is replayed.

        ``isolation_level`` (``"SERIALIZABLE"``, ``"REPEATABLE READ"``, ...), ``readonly``
        and ``deferrable`` apply to this transaction only: psycopg2 sends them with its
        ``BEGIN``, not as a session ``SET`` (which would pin an RDS Proxy connection).
        """
        remaining = _remaining_seconds(context)
        lambda_deadline = None if remaining is None else time.monotonic() + remaining
        # The lock covers the checkout, not the handler: threads the handler starts may
        # call get_connection() and must get this invocation's connection, not block.
        with self._lock:
            if self._in_invocation:
                raise LambdaDbError("Database.invocation() is not re-entrant")
            settings = self.settings
            margin = settings.margin_for(remaining)
            now = self._clock()
            connect_deadline = (
                now + settings.connect_budget
                if remaining is None
                else now + max(0.0, remaining - margin)
            )
            conn = self.get_connection(deadline=connect_deadline)
            self.stats.invocations += 1
            self._in_invocation = True
        try:
            statement_timeout, guard = self._deadlines(lambda_deadline, margin)
            conn.set_session(
                isolation_level=DEFAULT if isolation_level is None else isolation_level,
                readonly=DEFAULT if readonly is None else readonly,
                deferrable=DEFAULT if deferrable is None else deferrable,
                autocommit=False,  # the invocation owns a transaction, whatever a caller set
            )
            if guard is not None:
                _set_tcp_user_timeout(conn, guard - time.monotonic())
            # lambda-db's own statements are always bounded client-side; the handler's
            # only with statement_guard (the wait callback forbids COPY and concurrent
            # use of one connection from several threads).
            with deadline_guard(guard):
                self._begin(conn, statement_timeout)
            try:
                if settings.statement_guard:
                    with deadline_guard(guard):
                        yield conn
                else:
                    yield conn
            except BaseException as exc:
                with deadline_guard(guard):
                    self._end_failed(conn, exc)
                raise
            with deadline_guard(guard):
                self._end_ok(conn)
        finally:
            with self._lock:
                self._in_invocation = False
                self._last_used = self._clock()

    def _deadlines(
        self, lambda_deadline: float | None, margin: float
    ) -> tuple[float | None, float | None]:
        """``statement_timeout`` (seconds) and the client guard (monotonic), after connecting.

        Both come from what is left *now*: time spent waiting for a slot is gone.
        """
        if lambda_deadline is None:
            return None, None
        left = lambda_deadline - time.monotonic() - margin
        if left <= 0:
            raise DatabaseUnavailableError(
                f"no time left for the invocation after connecting (less than the "
                f"{margin:g} s DB_DEADLINE_MARGIN remains before the function's timeout)",
                attempts=0,
                budget=0.0,
            )
        return left, lambda_deadline - margin / 2

    def _begin(self, conn: Connection, statement_timeout: float | None) -> None:
        """Open the transaction with its guard rails, all transaction-local."""
        idle_timeout = self.settings.idle_in_transaction_timeout
        if statement_timeout is None and idle_timeout is None:
            return
        settings = []
        params: list[str] = []
        if statement_timeout is not None:
            settings.append("set_config('statement_timeout', %s, true)")
            params.append(f"{max(1, int(statement_timeout * 1000))}ms")
        if idle_timeout is not None:
            settings.append("set_config('idle_in_transaction_session_timeout', %s, true)")
            params.append(f"{max(1, int(idle_timeout * 1000))}ms")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT " + ", ".join(settings), params)
        except psycopg2.Error as exc:
            if is_disconnect(exc, conn):
                raise self._lost(exc, during="the start of the invocation") from exc
            self._rollback(conn)  # the handler never ran: leave no transaction open
            raise

    def _end_ok(self, conn: Connection) -> None:
        status = conn.info.transaction_status if not conn.closed else None
        if status == TRANSACTION_STATUS_INERROR:
            # The handler caught a database error and returned: nothing can commit.
            logger.warning(
                "the handler returned with its transaction aborted by an earlier error; "
                "rolled back, nothing was committed"
            )
            self._rollback(conn)
            return
        try:
            conn.commit()
        except psycopg2.Error as exc:
            if is_disconnect(exc, conn):
                raise self._lost(exc, during="COMMIT", outcome_unknown=True) from exc
            self._rollback(conn)
            raise
        self.stats.commits += 1

    def _end_failed(self, conn: Connection, exc: BaseException) -> None:
        if is_disconnect(exc, conn):
            raise self._lost(exc, during="the invocation") from exc
        self._rollback(conn)

    def _rollback(self, conn: Connection) -> None:
        self.stats.rollbacks += 1
        try:
            conn.rollback()
        except psycopg2.Error as exc:
            # A connection we cannot roll back must not be handed out again.
            self._discard(f"rollback failed ({_brief(exc)})")

    def _lost(
        self, exc: BaseException, *, during: str, outcome_unknown: bool = False
    ) -> ConnectionLostError:
        self.stats.connections_lost += 1
        self._emit("ConnectionsLost")
        self._discard(f"lost during {during}")
        outcome = " (the outcome is unknown)" if outcome_unknown else ""
        return ConnectionLostError(
            f"the database connection was lost during {during}{outcome}: {_brief(exc)}; "
            "nothing was replayed and the next invocation gets a fresh connection",
            outcome_unknown=outcome_unknown,
        )

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (it reopens on the next :meth:`get_connection`)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.closed:
                logger.info("closing the database connection")
                with contextlib.suppress(Exception):
                    conn.close()

    def invalidate_credentials(self) -> None:
        """Forget cached secrets and tokens (after a SnapStart restore)."""
        if self._provider is not None:
            self._provider.invalidate()

    def _emit(self, name: str, value: float = 1) -> None:
        if self._metrics is not None:
            self._metrics.add_metric(name=name, unit="Count", value=value)


_INSTANCES: weakref.WeakSet[Database] = weakref.WeakSet()


def _before_snapshot() -> None:
    """SnapStart: no connection may be frozen into the snapshot."""
    for db in list(_INSTANCES):
        db.close()


def _after_restore() -> None:
    """SnapStart: restored copies must share no token, cached secret or random state."""
    for db in list(_INSTANCES):
        db.close()
        db.invalidate_credentials()
        db._backoff.reseed()  # identical jitter in every copy would retry in lockstep


def _remaining_seconds(context: LambdaContext | None) -> float | None:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if getter is None:
        return None
    return float(getter()) / 1000.0


def _socket_readable(conn: Connection) -> bool:
    """Zero-wait poll: is there anything to read on an idle connection? (No round trip.)"""
    try:
        fd = conn.fileno()
    except psycopg2.Error:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def _set_tcp_user_timeout(conn: Connection, seconds: float) -> None:
    """Let the kernel fail the socket when sent data goes unacknowledged past the deadline.

    A black-holed network (a dropped NAT flow, a vanished peer) acknowledges nothing, so
    this bounds even the handler's own statements without any wait callback. A local
    ``setsockopt`` on a duplicate of libpq's socket: no round trip. Linux only; a no-op
    elsewhere and on Unix-domain sockets.
    """
    if _TCP_USER_TIMEOUT is None:
        return
    with contextlib.suppress(OSError, psycopg2.Error, ValueError):
        dup = socket.socket(fileno=os.dup(conn.fileno()))  # family detected from the fd
        try:
            if dup.family in (socket.AF_INET, socket.AF_INET6):
                dup.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, max(1, int(seconds * 1000)))
        finally:
            dup.close()


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
