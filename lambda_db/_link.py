"""*How* the cached connection is opened, checked with a round trip, and closed.

:mod:`lambda_db._checks` decides *when* (the order of the checks, what to count); this
module does each step with a driver (:mod:`lambda_db._driver`) and the connection's
:class:`~lambda_db._socket.Transport`, the duplicate of its socket that the zero-wait
health check polls and the watchdog shuts down:

* :func:`open_link`: a new connection inside the deadline's connect budget (retries,
  credentials: :func:`~lambda_db._connect.connect_with_retry`) and its transport;
* :func:`round_trip`: one request (a ``SELECT 1``, a leftover ``ROLLBACK``) cut by the
  watchdog when it has no answer in time; a lost link is a reason, any other error
  propagates;
* :func:`close_link`: close both (the drivers' ``close`` never raises).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lambda_db._backoff import Backoff
from lambda_db._classify import disconnected
from lambda_db._connect import ConnectResult, connect_with_retry
from lambda_db._credentials import CredentialProvider
from lambda_db._driver import Driver
from lambda_db._socket import Transport
from lambda_db._watchdog import WATCHDOG
from lambda_db.config import Settings

__all__ = ["close_link", "open_link", "round_trip"]


def open_link(
    settings: Settings,
    provider: CredentialProvider,
    driver: Driver,
    *,
    connect_by: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    backoff: Backoff,
) -> tuple[Any, Transport, ConnectResult]:
    """A new connection by ``connect_by`` (on ``clock``), its transport, what it took."""
    result = connect_with_retry(
        settings,
        provider,
        driver,
        deadline=connect_by,
        clock=clock,
        sleep=sleep,
        backoff=backoff,
    )
    conn = result.connection
    try:
        transport = Transport(driver.fileno(conn))
    except OSError:
        driver.close(conn)
        raise
    return conn, transport, result


def round_trip(
    driver: Driver,
    conn: Any,
    transport: Transport,
    action: Callable[[Any], None],
    seconds: float,
    *,
    why: str,
) -> str | None:
    """``action(conn)``, cut by the watchdog after ``seconds``: ``None`` when it went well,
    else why the connection must be replaced (no answer in time, or the link is gone)."""

    def lost(exc: BaseException) -> bool:
        return driver.closed(conn) or disconnected(driver.error_info(exc))

    return WATCHDOG.bounded(transport, lambda: action(conn), seconds, lost=lost, why=why)


def close_link(driver: Driver, conn: Any, transport: Transport | None) -> None:
    """Close the connection and release its transport (never raises for the connection)."""
    driver.close(conn)
    if transport is not None:
        transport.close()
