"""*When* the cached connection is checked and replaced: the order of the checks, the counters.

A Lambda execution environment runs one invocation at a time and keeps module state
between them, so the right pool size is one. :class:`~lambda_db.Database` holds that
connection; an invocation checks it at its first use, cheapest first:

1. closed (the driver's verdict; local);
2. transaction status: a transaction left open by an *earlier* invocation is rolled back,
   with a WARNING; the current invocation's own transaction is handed back untouched;
3. age past ``max_age`` (recycle; local);
4. the socket: a zero-wait ``poll`` finds a backend the server killed while the
   environment was frozen (it leaves EOF or an error message to read) with no round trip;
5. ``SELECT 1`` (in autocommit: no transaction) only after ``idle_ping_after`` of idleness.

:func:`healthy` is the warm path (1 to 4 and the idle time: no round trip, C-level reads);
when it says no, :func:`acquire` looks again and decides. A connection that fails a check
is closed and replaced before anyone sees it. *How* each step is done is
:mod:`lambda_db._link`'s (open, bounded round trip, close), the driver's
(:mod:`lambda_db._driver`) and the socket's (:mod:`lambda_db._socket`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lambda_db._deadline import Deadline
from lambda_db._driver import ACTIVE, AT_DEFAULTS, IDLE, INERROR, INTRANS
from lambda_db._link import open_link, round_trip

if TYPE_CHECKING:
    from lambda_db.database import Database

__all__ = ["acquire", "healthy"]

logger = logging.getLogger(__name__)


def healthy(db: Database, conn: Any, now: float) -> bool:
    """The warm path's checks, all local or a zero-wait poll: True when ``conn`` can be
    handed to a new invocation as is. False sends the caller to :func:`acquire`, which
    looks again and decides (a leftover rollback, a ping, a replacement)."""
    settings = db._settings
    driver = db._driver
    transport = db._transport
    if (
        driver is None
        or settings is None
        or transport is None
        or (settings.max_age and now - db._opened_at >= settings.max_age)
        or now - db._last_used >= settings.idle_ping_after
    ):
        return False
    # Loaded, then called: ``obj.attr(...)`` compiles to LOAD_METHOD, which CPython 3.11
    # specializes only when ``attr`` is a method of the type (a Python function or a C
    # method descriptor) not shadowed by the instance; these are an instance value and
    # a slot holding callables, whose loads (LOAD_ATTR) it does specialize.
    session, status, poll = driver.session, driver.status, transport.poll
    try:
        return (
            session(conn) == AT_DEFAULTS  # open, autocommit off, the defaults
            and status(conn) == IDLE  # no transaction
            and not poll(0)  # Transport.readable(), without its frame
        )
    except Exception:  # noqa: BLE001 (a closed connection's getter, a closed socket)
        return False  # acquire() looks again, and decides


def acquire(db: Database, deadline: Deadline, *, fresh: bool) -> Any:
    """The checked connection, or a new one within ``deadline`` (for the scope).

    ``fresh``: a new invocation starts here, so a transaction still open belongs to
    an earlier one and is rolled back.
    """
    conn = db._conn
    if conn is not None:
        reason = _check(db, conn, deadline, fresh=fresh)
        if reason is None:
            db.stats.reuses += 1
            return conn
        db.discard(reason)
        db.stats.health_check_failures += 1
        db.emit("HealthCheckFailures")
    return _open(db, deadline)


def _check(db: Database, conn: Any, deadline: Deadline, *, fresh: bool) -> str | None:
    """Why ``conn`` must be replaced, or ``None`` when it is fit to hand out."""
    driver = db._driver
    settings = db._settings
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
        db.stats.leftover_rollbacks += 1
        failed = _bounded(
            db, conn, driver.rollback, deadline, why="leftover rollback", no_time="no time left"
        )
        if failed is not None:
            return f"{failed}: the server rolls it back when the connection closes"
    now = db._clock()
    if settings.max_age and now - db._opened_at >= settings.max_age:
        return f"older than max_age ({settings.max_age:g} s)"
    transport = db._transport
    if transport is not None and transport.readable():
        # EOF or an unsolicited message (a FATAL from pg_terminate_backend, a NOTICE):
        # let a ping decide rather than guess.
        return _ping(db, conn, deadline, why="socket readable")
    if now - db._last_used >= settings.idle_ping_after:
        return _ping(db, conn, deadline, why="idle")
    return None


def _ping(db: Database, conn: Any, deadline: Deadline, *, why: str) -> str | None:
    """``SELECT 1`` without a transaction: a disconnect or no answer means replace."""

    def ping(conn: Any) -> None:
        db.stats.pings += 1
        db.driver.ping(conn)

    return _bounded(db, conn, ping, deadline, why=f"ping after {why}")


def _bounded(
    db: Database,
    conn: Any,
    action: Callable[[Any], None],
    deadline: Deadline,
    *,
    why: str,
    no_time: str | None = None,
) -> str | None:
    """One round trip bounded by ``connect_timeout`` and the deadline: a reason to
    replace the connection, or ``None``. With no time left it is skipped and ``no_time``
    is the answer (``None``: keep a connection unchecked rather than throw it away)."""
    wait = min(db.settings.connect_timeout, deadline.left())
    if wait <= 0:
        return None if no_time is None else f"{why} skipped ({no_time})"
    assert db._transport is not None  # set together with the connection
    return round_trip(db.driver, conn, db._transport, action, wait, why=why)


def _open(db: Database, deadline: Deadline) -> Any:
    conn, transport, result = open_link(
        db.settings,
        db.provider,
        db.driver,
        connect_by=deadline.connect_by,
        clock=db._clock,
        sleep=db._sleep,
        backoff=db._backoff,
    )
    db._conn, db._transport = conn, transport
    db._opened_at = db._last_used = db._clock()
    db.stats.connects += 1
    db.stats.retries += result.retries
    db.stats.auth_refreshes += int(result.refreshed)
    db.emit("Connects")
    if result.retries:
        db.emit("ConnectRetries", result.retries)
    settings = db.settings
    logger.info(
        "connected to %s:%s/%s as %r in %.1f ms (%d attempt(s), %s auth)",
        settings.host or "(from credentials)", settings.port, settings.dbname,
        db.driver.user(conn), result.seconds * 1000, result.attempts, settings.auth_mode,
    )  # fmt: skip
    return conn
