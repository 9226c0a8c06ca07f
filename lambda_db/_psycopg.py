"""The psycopg 3 driver (``DB_DRIVER=psycopg``): how lambda-db connects, pings and configures
``psycopg.Connection`` objects. Imported only when chosen.

What psycopg 3 sends, checked against the server's statement log (tests/functional):

* ``BEGIN`` (with ``ISOLATION LEVEL``/``READ ONLY``/``DEFERRABLE`` when set) before the
  first statement of a transaction, ``COMMIT``/``ROLLBACK`` only when one is open; with
  ``autocommit`` neither. Changing ``autocommit``, ``isolation_level``, ``read_only`` or
  ``deferrable`` sends nothing at all (psycopg 3 refuses the change inside a transaction
  instead, and never sends ``SET default_transaction_*``);
* statements with parameters through the extended protocol, as *unnamed* statements
  (they no longer pin RDS Proxy). psycopg 3 would *name* and prepare a query executed
  ``prepare_threshold`` times (5 by default), and a named prepared statement pins: lambda-db
  connects with ``prepare_threshold = None``, which also refuses ``execute(prepare=True)``;
* at connect, nothing (the startup packet carries ``application_name`` and no ``options``,
  from the same libpq parameters as psycopg2's: :func:`lambda_db._connect.connect_kwargs`).

Connecting is bounded exactly by the attempt's timeout. libpq's ``connect_timeout`` counts
whole seconds (at least 2), and ``psycopg.Connection.connect()`` rounds it the same way
then checks it only when its wait wakes up (every 0.1 s). lambda-db instead drives psycopg's
own connection generator (``Connection._connect_gen``, the one ``connect()`` uses: the same
libpq calls, errors and C implementation) and waits on the socket itself, each wait bounded
by the time left. The generator is private API, stable in what lambda-db uses from 3.2.0 to
3.3.9 (it yields ``(fileno, Wait)`` and is sent ``Ready``), hence the extra's ``<3.4``.
libpq resolves the host name and walks its addresses inside that one bounded attempt.
Statements are bounded by the watchdog (:mod:`lambda_db._watchdog`), which needs only the
socket: ``COPY``, threads and pipelines keep working.

Example::

    >>> from lambda_db._driver import get_driver
    >>> get_driver("psycopg").name
    'psycopg'
"""

from __future__ import annotations

import contextlib
import math
import operator
import select
import time
from collections.abc import Callable, Generator
from typing import Any, Final

import psycopg
from psycopg import IsolationLevel
from psycopg.conninfo import make_conninfo
from psycopg.waiting import Ready, Wait

from lambda_db._driver import AT_DEFAULTS, IDLE, ErrorInfo

__all__ = ["PSYCOPG", "ConnectTimeout", "PsycopgDriver", "parse_isolation_level"]

#: What psycopg 3 says when an operation meets a connection that is already closed.
_CLOSED_WORDING: Final = "the connection is closed"

_EVENTS: Final = {
    Wait.R: select.POLLIN,
    Wait.W: select.POLLOUT,
    Wait.RW: select.POLLIN | select.POLLOUT,
}
_ANY_ERROR: Final = select.POLLERR | select.POLLHUP | select.POLLNVAL


class ConnectTimeout(psycopg.errors.ConnectionTimeout):
    """The server did not complete the connection before the attempt's deadline."""


def parse_isolation_level(name: str | None) -> IsolationLevel | None:
    """psycopg 3's level for a name as psycopg2 takes it (``"REPEATABLE READ"``, any case).

    >>> parse_isolation_level("repeatable read")
    <IsolationLevel.REPEATABLE_READ: 3>
    >>> parse_isolation_level(None) is None
    True
    """
    if name is None:
        return None
    try:
        return IsolationLevel[name.strip().upper().replace(" ", "_")]
    except KeyError:
        names = ", ".join(level.name.replace("_", " ") for level in IsolationLevel)
        raise ValueError(f"unknown isolation level {name!r}: use one of {names}") from None


class PsycopgDriver:
    """:class:`~lambda_db._driver.Driver` for psycopg 3."""

    name = "psycopg"

    def __init__(self) -> None:
        # C-level callables (Driver.status, Driver.session) stored on the instance: the
        # warm path loads them, then calls them; CPython 3.11 specializes a load of an
        # instance value, not ``driver.status(conn)`` on an attribute that is no function.
        self.status: Callable[[Any], int] = operator.attrgetter("pgconn.transaction_status")
        self.session: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(
            "closed", "autocommit", "isolation_level", "read_only", "deferrable"
        )

    def connect(self, params: dict[str, Any], *, timeout: float) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + timeout
        # Called with the conninfo alone: 3.2-3.3.4 also took a ``timeout`` here, 3.3.5+ moved
        # it to the waiting function; the deadline kept by _drive is the only one either way.
        gen = psycopg.Connection._connect_gen(make_conninfo("", **params))
        try:
            conn = _drive(gen, deadline)
        except psycopg.Error as exc:
            # psycopg attaches the finished PGconn to a connect error, and its repr and
            # ``password`` hold the password (an IAM token): it must not travel up the
            # cause chain of lambda-db's errors.
            exc._pgconn = None
            raise
        conn.prepare_threshold = None  # named prepared statements pin RDS Proxy
        return conn

    def error_info(self, exc: BaseException) -> ErrorInfo | None:
        if not isinstance(exc, psycopg.Error):
            return None
        message = str(exc)
        operational = isinstance(exc, psycopg.OperationalError)
        # Only the connection's own "closed" verdict: an InterfaceError such as "the cursor
        # is closed" is the handler's mistake on a healthy connection.
        closed = operational and message == _CLOSED_WORDING
        return ErrorInfo(exc.sqlstate, message, operational, closed)

    def closed(self, conn: psycopg.Connection[Any]) -> bool:
        return conn.closed

    def fileno(self, conn: psycopg.Connection[Any]) -> int:
        return conn.fileno()

    def ping(self, conn: psycopg.Connection[Any]) -> None:
        # psycopg_pool's check_connection, with a statement the log can show.
        if conn.autocommit:
            conn.execute("SELECT 1")
            return
        conn.autocommit = True  # no transaction: nothing to roll back, nothing pinned
        try:
            conn.execute("SELECT 1")
        finally:
            if not conn.closed:
                conn.autocommit = False

    def prepare(
        self,
        conn: psycopg.Connection[Any],
        *,
        autocommit: bool,
        isolation_level: str | None,
        readonly: bool | None,
        deferrable: bool | None,
    ) -> bool:
        wanted = (parse_isolation_level(isolation_level), readonly, deferrable)
        if autocommit and wanted != (None, None, None):
            raise ValueError(
                "autocommit runs no transaction: isolation_level, readonly and deferrable "
                "would apply to none (lambda-db sends them with BEGIN, never as SET)"
            )
        changed = False
        # Each setter sends nothing: psycopg 3 puts them in its next BEGIN.
        if (conn.isolation_level, conn.read_only, conn.deferrable) != wanted:
            conn.isolation_level, conn.read_only, conn.deferrable = wanted
            changed = True
        if conn.autocommit != autocommit:
            conn.autocommit = autocommit
            changed = True
        return changed

    def prepare_default(self, conn: psycopg.Connection[Any]) -> bool:
        if self.session(conn) == AT_DEFAULTS or self.status(conn) != IDLE:
            return False  # at the defaults; or closed (UNKNOWN), or in a transaction
        return self.prepare(
            conn, autocommit=False, isolation_level=None, readonly=None, deferrable=None
        )

    def set_local_statement_timeout(self, conn: psycopg.Connection[Any], milliseconds: int) -> None:
        # SET takes no bind parameters; the value is an int, formatted here.
        with conn.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = '{int(milliseconds)}ms'")

    def commit(self, conn: psycopg.Connection[Any]) -> None:
        conn.commit()

    def rollback(self, conn: psycopg.Connection[Any]) -> None:
        conn.rollback()

    def close(self, conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def user(self, conn: psycopg.Connection[Any]) -> str:
        return str(conn.info.user)


#: The one instance (the driver holds no state).
PSYCOPG = PsycopgDriver()


def _drive(
    gen: Generator[tuple[int, Wait], Ready, psycopg.Connection[Any]], deadline: float
) -> psycopg.Connection[Any]:
    """Run psycopg's connection generator to its end, waiting on its socket until ``deadline``.

    The generator says which descriptor to wait on and for what (libpq may move to another
    address, so the descriptor can change); it is sent what became ready. When ``deadline``
    comes first, the generator is closed (its half-open ``PGconn`` is finished with it) and
    :class:`ConnectTimeout` is raised.
    """
    try:
        fileno, wait = next(gen)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectTimeout(
                    "timeout expired: no answer before the connect attempt's deadline"
                )
            poller = select.poll()
            poller.register(fileno, _EVENTS[wait])
            events = 0
            for _, revents in poller.poll(math.ceil(left * 1000)):
                events |= revents
            ready = 0
            if events & (select.POLLIN | _ANY_ERROR):
                ready |= Ready.R  # an error surfaces when libpq reads
            if events & select.POLLOUT:
                ready |= Ready.W
            if ready:
                fileno, wait = gen.send(Ready(ready))
    except StopIteration as done:
        conn: psycopg.Connection[Any] = done.value
        return conn
    finally:
        gen.close()
