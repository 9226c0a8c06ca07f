"""One health-checked connection per execution environment, and the invocation scope.

A Lambda execution environment runs one invocation at a time and keeps module state
between them, so the right pool size is one. :class:`Database` holds that connection and
checks it on every :meth:`~Database.get_connection`, cheapest first:

1. ``conn.closed`` (local state);
2. age past ``max_age`` (recycle; local);
3. transaction status: a transaction left open by an earlier caller is rolled back,
   with a WARNING (local, plus the ``ROLLBACK``);
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
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import (
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
from lambda_db.errors import ConnectionLostError, LambdaDbError

__all__ = ["Database", "LambdaContext", "Stats"]

logger = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection


class LambdaContext(Protocol):
    """The part of the Lambda context object we use."""

    def get_remaining_time_in_millis(self) -> int: ...


class MetricsSink(Protocol):
    """What we need of Powertools ``Metrics`` (``add_metric(name=..., unit=..., value=...)``)."""

    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


@dataclass
class Stats:
    """Counters: the stable interface for what happened (log text is not).

    ``connects`` counts connections opened, ``reuses`` warm hand-outs of an existing
    one, ``health_check_failures`` connections found dead or too old and replaced,
    ``pings`` idle-threshold round trips, ``retries`` waits between connect attempts,
    ``auth_refreshes`` credential refreshes after an authentication failure,
    ``leftover_rollbacks`` transactions found open at hand-out, ``commits`` and
    ``rollbacks`` invocation outcomes, ``connections_lost`` invocations whose
    connection died under them.
    """

    connects: int = 0
    reuses: int = 0
    health_check_failures: int = 0
    pings: int = 0
    retries: int = 0
    auth_refreshes: int = 0
    leftover_rollbacks: int = 0
    invocations: int = 0
    commits: int = 0
    rollbacks: int = 0
    connections_lost: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and metrics)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        it runs the health checks; ``deadline`` (a ``time.monotonic()`` value) bounds
        any reconnect, defaulting to ``connect_budget`` seconds from now.
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
        settings = self.settings
        if settings.max_age and now - self._opened_at >= settings.max_age:
            return f"older than max_age ({settings.max_age:g} s)"
        status = conn.info.transaction_status
        if status in (TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR):
            logger.warning("rolling back a transaction left open by an earlier caller")
            self.stats.leftover_rollbacks += 1
            try:
                conn.rollback()
            except psycopg2.Error as exc:
                return f"rollback of a leftover transaction failed ({_brief(exc)})"
        elif status != TRANSACTION_STATUS_IDLE:
            return "connection in an unknown state"
        if _socket_readable(conn):
            # EOF or an unsolicited message (a FATAL from pg_terminate_backend, a NOTICE):
            # let a ping decide rather than guess.
            return self._ping(conn, why="socket readable", budget=deadline - now)
        if now - self._last_used >= settings.idle_ping_after:
            return self._ping(conn, why="idle", budget=deadline - now)
        return None

    def _ping(self, conn: Connection, *, why: str, budget: float) -> str | None:
        """``SELECT 1`` in autocommit (no transaction opened); a disconnect means replace.

        The ping waits at most ``connect_timeout`` and never past the caller's deadline.
        """
        self.stats.pings += 1
        autocommit = conn.autocommit
        wait = max(0.0, min(self.settings.connect_timeout, budget))
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
    def invocation(self, context: LambdaContext | None = None) -> Iterator[Connection]:
        """Scope one invocation's transaction on the cached connection.

        Commits when the block ends normally, rolls back when it raises (the exception
        propagates). With a Lambda ``context`` the connect budget and a transaction-local
        ``statement_timeout`` both end ``deadline_margin`` seconds before the function's
        own timeout. A connection lost inside the block fails the invocation with
        :class:`ConnectionLostError`; nothing is replayed.
        """
        # The lock covers the checkout, not the handler: threads the handler starts may
        # call get_connection() and must get this invocation's connection, not block.
        with self._lock:
            if self._in_invocation:
                raise LambdaDbError("Database.invocation() is not re-entrant")
            settings = self.settings
            now = self._clock()
            remaining = _remaining_seconds(context)
            if remaining is None:
                deadline = now + settings.connect_budget
                statement_timeout = None
            else:
                deadline = now + max(0.0, remaining - settings.deadline_margin)
                statement_timeout = max(0.001, remaining - settings.deadline_margin)
            conn = self.get_connection(deadline=deadline)
            if conn.autocommit:  # the invocation owns a transaction, whatever a caller set
                conn.autocommit = False
            self.stats.invocations += 1
            self._in_invocation = True
        # Client-side bound for a silent network path: half the margin after the
        # server-side statement_timeout, still before Lambda's own timeout.
        guard = (
            None
            if remaining is None
            else time.monotonic() + max(0.0, remaining - settings.deadline_margin / 2)
        )
        try:
            with deadline_guard(guard):
                try:
                    self._begin(conn, statement_timeout)
                    yield conn
                except BaseException as exc:
                    self._end_failed(conn, exc)
                    raise
                else:
                    self._end_ok(conn)
        finally:
            with self._lock:
                self._in_invocation = False
                self._last_used = self._clock()

    def _begin(self, conn: Connection, statement_timeout: float | None) -> None:
        """Open the transaction with its guard rails, all transaction-local (no pinning)."""
        idle_timeout = self.settings.idle_in_transaction_timeout
        if statement_timeout is None and idle_timeout is None:
            return
        settings = []
        params: list[str] = []
        if statement_timeout is not None:
            settings.append("set_config('statement_timeout', %s, true)")
            params.append(f"{int(statement_timeout * 1000)}ms")
        if idle_timeout is not None:
            settings.append("set_config('idle_in_transaction_session_timeout', %s, true)")
            params.append(f"{int(idle_timeout * 1000)}ms")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT " + ", ".join(settings), params)
        except psycopg2.Error as exc:
            if is_disconnect(exc, conn):
                raise self._lost(exc, during="the start of the invocation") from exc
            raise

    def _end_ok(self, conn: Connection) -> None:
        status = conn.info.transaction_status if not conn.closed else None
        if status == TRANSACTION_STATUS_INERROR:
            # The handler caught a database error and returned: nothing can commit.
            logger.info("the handler returned with its transaction aborted; rolling back")
            self._rollback(conn)
            return
        try:
            conn.commit()
        except psycopg2.Error as exc:
            if is_disconnect(exc, conn):
                raise self._lost(exc, during="COMMIT (the outcome is unknown)") from exc
            self._rollback(conn)
            raise
        self.stats.commits += 1

    def _end_failed(self, conn: Connection, exc: BaseException) -> None:
        if isinstance(exc, ConnectionLostError):  # raised by _begin: already handled
            return
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

    def _lost(self, exc: BaseException, *, during: str) -> ConnectionLostError:
        self.stats.connections_lost += 1
        self._emit("ConnectionsLost")
        self._discard(f"lost during {during}")
        return ConnectionLostError(
            f"the database connection was lost during {during} ({_brief(exc)}); "
            "nothing was replayed and the next invocation gets a fresh connection"
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
    """SnapStart: restored copies must not share tokens or a cached secret's age."""
    for db in list(_INSTANCES):
        db.close()
        db.invalidate_credentials()


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


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
