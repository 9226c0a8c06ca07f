"""The psycopg2 driver: how lambda-db connects, pings and configures psycopg2 connections.

What psycopg2 sends, checked against the server's statement log (tests/functional):

* ``BEGIN`` (with ``ISOLATION LEVEL``/``READ ONLY``/``DEFERRABLE`` when set) before the
  first statement of a transaction, ``COMMIT``/``ROLLBACK`` only when one is open;
* nothing when ``autocommit`` or the transaction characteristics change while they are
  all at the server's default. It sends ``SET default_transaction_*`` only when
  characteristics are non-default while ``autocommit`` is on, or when leaving autocommit
  with them non-default: :meth:`Psycopg2Driver.prepare` never lets that happen;
* at connect, nothing (``SET DATESTYLE TO 'ISO'`` only if the server's DateStyle is not
  ISO, which ``lambda-db doctor`` would show).

Connecting is bounded exactly (libpq's ``connect_timeout`` counts whole seconds and at
least 2) by a psycopg2 *wait callback* installed only while a connect is in progress: it
polls the socket and gives up at the attempt's deadline. The callback is process-wide and
forbids ``COPY`` in other threads while it is installed, which is why lambda-db uses it for
connecting only and bounds statements with the watchdog (:mod:`lambda_db._watchdog`).

Known limit (found 2026-12-03, not fixed): while the callback is installed, a statement
(or psycopg2's ``BEGIN``, ``COMMIT``, ``ROLLBACK``) that another thread starts on any
psycopg2 connection in the process runs in green mode, and psycopg2 looks the callback up
again, after taking the GIL back, when it begins to wait. If the connect ended and
removed it in between, the wait fails with ``OperationalError: wait callback not
available`` and psycopg2 closes that connection, although the statement was already
sent (the server runs it: an autocommit statement or a ``COMMIT`` may well have taken
effect; inside a scope lambda-db reports ``ConnectionLostError``, for a ``COMMIT`` with
the outcome unknown). Any connect opens the window (a cold start, a reconnect, a
replacement after a failed check); large objects are refused in other threads while it
is open, as ``COPY`` is. Seen once, in the fresh-clone test run of commit 9704692, where
two databases were used from two threads as one of them connected. The psycopg 3 driver
(``DB_DRIVER=psycopg``) has no such window: it drives its own connection generator and
installs nothing process-wide. A fix would connect without a global callback (a blocking
connect in a helper thread, waited for until the attempt's deadline).
"""

from __future__ import annotations

import contextlib
import operator
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import psycopg2
import psycopg2.extensions as ext

from lambda_db._driver import AT_DEFAULTS, IDLE, ErrorInfo

__all__ = ["PSYCOPG2", "ConnectTimeout", "Psycopg2Driver"]

_DEFAULT: Final = "default"


class ConnectTimeout(psycopg2.OperationalError):
    """The server did not complete the connection before the attempt's deadline."""


class Psycopg2Driver:
    """:class:`~lambda_db._driver.Driver` for psycopg2."""

    name = "psycopg2"

    def __init__(self) -> None:
        # C-level callables (Driver.status, Driver.session) stored on the instance: the
        # warm path loads them, then calls them; CPython 3.11 specializes a load of an
        # instance value, not ``driver.status(conn)`` on an attribute that is no function.
        self.status: Callable[[Any], int] = operator.methodcaller("get_transaction_status")
        self.session: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(
            "closed", "autocommit", "isolation_level", "readonly", "deferrable"
        )

    def connect(self, params: dict[str, Any], *, timeout: float) -> ext.connection:
        with _connect_guard(time.monotonic() + timeout):
            conn: ext.connection = psycopg2.connect(**params)
        return conn

    def error_info(self, exc: BaseException) -> ErrorInfo | None:
        if not isinstance(exc, psycopg2.Error):
            return None
        return ErrorInfo(
            exc.pgcode,
            str(exc),
            isinstance(exc, psycopg2.OperationalError),
            # "connection already closed"; not "cursor already closed" (the handler's
            # mistake on a healthy connection).
            isinstance(exc, psycopg2.InterfaceError) and str(exc).startswith("connection"),
        )

    def closed(self, conn: ext.connection) -> bool:
        return bool(conn.closed)

    def fileno(self, conn: ext.connection) -> int:
        return int(conn.fileno())

    def ping(self, conn: ext.connection) -> None:
        autocommit = conn.autocommit
        saved = (conn.isolation_level, conn.readonly, conn.deferrable)
        custom = saved != (None, None, None)
        if custom and not autocommit:
            # Leaving autocommit with non-default characteristics makes psycopg2 send
            # SET default_transaction_* TO DEFAULT: take them off first (sends nothing).
            conn.set_session(_DEFAULT, _DEFAULT, _DEFAULT)
        conn.autocommit = True  # no transaction: nothing to roll back, nothing pinned
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
                if custom and not autocommit:
                    isolation_level, readonly, deferrable = saved
                    conn.set_session(
                        _DEFAULT if isolation_level is None else isolation_level,
                        _DEFAULT if readonly is None else readonly,
                        _DEFAULT if deferrable is None else deferrable,
                    )

    def prepare(
        self,
        conn: ext.connection,
        *,
        autocommit: bool,
        isolation_level: str | None,
        readonly: bool | None,
        deferrable: bool | None,
    ) -> bool:
        characteristics = (isolation_level, readonly, deferrable)
        current = (conn.isolation_level, conn.readonly, conn.deferrable)
        changed = False
        if conn.autocommit:
            # Leave autocommit with the characteristics at their defaults, or psycopg2
            # would send SET default_transaction_* TO DEFAULT.
            if current != (None, None, None):
                conn.set_session(_DEFAULT, _DEFAULT, _DEFAULT)
            conn.autocommit = False
            changed = True
            current = (None, None, None)
        if current != characteristics:
            conn.set_session(
                _DEFAULT if isolation_level is None else isolation_level,
                _DEFAULT if readonly is None else readonly,
                _DEFAULT if deferrable is None else deferrable,
            )
            changed = True
        if autocommit:
            if characteristics != (None, None, None):
                raise ValueError(
                    "autocommit runs no transaction: isolation_level, readonly and deferrable "
                    "would need SET default_transaction_*, which pins RDS Proxy"
                )
            conn.autocommit = True
            changed = True
        return changed

    def prepare_default(self, conn: ext.connection) -> bool:
        if self.session(conn) == AT_DEFAULTS or conn.get_transaction_status() != IDLE:
            return False  # at the defaults; or closed (UNKNOWN), or in a transaction
        return self.prepare(
            conn, autocommit=False, isolation_level=None, readonly=None, deferrable=None
        )

    def set_local_statement_timeout(self, conn: ext.connection, milliseconds: int) -> None:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = %s", (f"{milliseconds}ms",))

    def commit(self, conn: ext.connection) -> None:
        conn.commit()

    def rollback(self, conn: ext.connection) -> None:
        conn.rollback()

    def close(self, conn: ext.connection) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def user(self, conn: ext.connection) -> str:
        return str(conn.info.user)


#: The one instance (the driver holds no state).
PSYCOPG2 = Psycopg2Driver()


# -- the connect guard ------------------------------------------------------------------

_local = threading.local()
_install_lock = threading.Lock()
_guards = 0  # connects in progress in any thread; the callback stays installed while > 0


def _wait(conn: Any) -> None:
    deadline: float | None = getattr(_local, "deadline", None)
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        if state == ext.POLL_READ:
            events = select.POLLIN
        elif state == ext.POLL_WRITE:
            events = select.POLLOUT
        else:  # pragma: no cover - psycopg2 raises before returning POLL_ERROR
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        poller = select.poll()
        poller.register(conn.fileno(), events | select.POLLERR | select.POLLHUP)
        if deadline is None:  # another thread's statement while we connect: no bound
            poller.poll()
            continue
        remaining_ms = (deadline - time.monotonic()) * 1000.0
        if remaining_ms <= 0 or not poller.poll(remaining_ms):
            raise ConnectTimeout("timeout expired: no answer before the connect attempt's deadline")


@contextlib.contextmanager
def _connect_guard(deadline: float) -> Iterator[None]:
    """Bound every libpq wait of this thread's connect by ``deadline`` (``time.monotonic()``).

    Stands aside when another wait callback (psycogreen's, say) is installed.
    """
    global _guards
    if ext.get_wait_callback() not in (None, _wait):
        yield
        return
    _local.deadline = deadline
    with _install_lock:
        _guards += 1
        if _guards == 1:
            ext.set_wait_callback(_wait)
    try:
        yield
    finally:
        _local.deadline = None
        with _install_lock:
            _guards -= 1
            if _guards == 0 and ext.get_wait_callback() is _wait:
                ext.set_wait_callback(None)
