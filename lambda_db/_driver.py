"""The driver seam: the pool decides *when*, the driver decides *how*.

:class:`~lambda_db.Database` owns the cached connection, the order of its health checks, the
invocation scope and the counters; it never touches a driver module. A :class:`Driver`
answers the questions that depend on the DB-API library in use: how to connect inside a
deadline, what state a connection is in, how to ping it without opening a transaction, how
to set a transaction's characteristics without sending ``SET`` (which pins RDS Proxy), and
what an exception means (:class:`ErrorInfo`, classified by :mod:`lambda_db._classify`).

psycopg2 is the default (:mod:`lambda_db._psycopg2`); psycopg 3 is ``DB_DRIVER=psycopg``
(:mod:`lambda_db._psycopg`). Each library is imported only when its driver is chosen.

Example::

    >>> driver = get_driver("psycopg2")
    >>> driver.name
    'psycopg2'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

__all__ = [
    "AT_DEFAULTS",
    "INERROR",
    "INTRANS",
    "ACTIVE",
    "IDLE",
    "UNKNOWN",
    "Driver",
    "ErrorInfo",
    "get_driver",
]

#: What :attr:`Driver.session` says of an open connection at the defaults: not closed,
#: autocommit off, and the server's own isolation level, read-only and deferrable settings.
AT_DEFAULTS: tuple[Any, ...] = (False, False, None, None, None)
# libpq's PGTransactionStatusType, which psycopg2 and psycopg 3 both report as is.
IDLE = 0
ACTIVE = 1
INTRANS = 2
INERROR = 3
UNKNOWN = 4


class ErrorInfo(NamedTuple):
    """What an exception from the driver says, in driver-neutral terms."""

    #: The SQLSTATE, when the server sent one.
    sqlstate: str | None
    #: The message (libpq's text at connect time, where there is often no SQLSTATE).
    message: str
    #: A connection-level failure (``OperationalError``), as opposed to a SQL error.
    operational: bool
    #: The driver refused because the connection is already closed (``InterfaceError``).
    closed: bool


class Driver(Protocol):
    """How to do things with one DB-API library's connections."""

    #: ``DB_DRIVER`` value.
    name: str

    def connect(self, params: dict[str, Any], *, timeout: float) -> Any:
        """Open a connection with libpq ``params``, giving up after ``timeout`` seconds exactly."""
        ...

    def error_info(self, exc: BaseException) -> ErrorInfo | None:
        """What ``exc`` says, or ``None`` when it is not this driver's exception."""
        ...

    def closed(self, conn: Any) -> bool:
        """The driver's own verdict: the connection is closed or broken."""
        ...

    @property
    def status(self) -> Callable[[Any], int]:
        """``status(conn)``: libpq's transaction status (:data:`IDLE`, :data:`INTRANS`, ...;
        :data:`UNKNOWN` once the connection is closed or bad); local, no round trip. An
        attribute rather than a method, so that a driver can make it a C-level callable
        (``operator.methodcaller``), stored on the instance: the end of every invocation
        asks it."""
        ...

    @property
    def session(self) -> Callable[[Any], tuple[Any, ...]]:
        """``session(conn)``: ``(closed, autocommit, isolation_level, readonly,
        deferrable)``, local; equal to :data:`AT_DEFAULTS` for an open connection whose
        next transaction has the server's characteristics. A C-level callable
        (``operator.attrgetter``) for the warm path, like :attr:`status`; a closed
        connection's answer is anything but :data:`AT_DEFAULTS`, or an error."""
        ...

    def fileno(self, conn: Any) -> int:
        """The connection's socket descriptor."""
        ...

    def ping(self, conn: Any) -> None:
        """One round trip that opens no transaction (``SELECT 1`` in autocommit); raises."""
        ...

    def prepare(
        self,
        conn: Any,
        *,
        autocommit: bool,
        isolation_level: str | None,
        readonly: bool | None,
        deferrable: bool | None,
    ) -> bool:
        """Set the next transaction's characteristics locally (sent with ``BEGIN``, never as
        ``SET``); ``None`` means the server's default. True when anything changed."""
        ...

    def prepare_default(self, conn: Any) -> bool:
        """:meth:`prepare` with every option at its default: the warm path's common case
        (a transaction, the server's characteristics), checked as cheaply as possible."""
        ...

    def set_local_statement_timeout(self, conn: Any, milliseconds: int) -> None:
        """``SET LOCAL statement_timeout`` (the opt-in; it pins RDS Proxy)."""
        ...

    def commit(self, conn: Any) -> None:
        """``COMMIT`` (nothing is sent when no transaction is open)."""
        ...

    def rollback(self, conn: Any) -> None:
        """``ROLLBACK`` (nothing is sent when no transaction is open)."""
        ...

    def close(self, conn: Any) -> None:
        """Close the connection, never raising."""
        ...

    def user(self, conn: Any) -> str:
        """The role the connection is logged in as (for log lines)."""
        ...


def get_driver(name: str) -> Driver:
    """The driver for ``DB_DRIVER``; its library is imported here, on first use."""
    if name == "psycopg2":
        from lambda_db._psycopg2 import PSYCOPG2

        return PSYCOPG2
    if name == "psycopg":
        from lambda_db._psycopg import PSYCOPG

        return PSYCOPG
    raise ValueError(f"unknown driver {name!r}")
