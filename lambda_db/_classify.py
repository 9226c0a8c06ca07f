"""What a driver error means for us: retry, refresh credentials, reconnect, or give up.

The pool decides *when* to check; this module decides *what counts as* a full server,
a disconnect or an authentication failure (SQLAlchemy's split between pool and
dialect). It reads the driver-neutral :class:`~lambda_db._driver.ErrorInfo` a driver makes
of its exception. SQLSTATE wins where there is one; at connect time libpq usually gives
only the message text, so the server's wordings are matched as a fallback. The wordings
cover PostgreSQL 11-18 and RDS Proxy.
"""

from __future__ import annotations

import enum

from lambda_db._driver import Driver, ErrorInfo, get_driver

__all__ = [
    "Failure",
    "brief",
    "classify",
    "classify_connect_error",
    "conflict",
    "disconnected",
    "driver_error",
    "is_disconnect",
]


class Failure(enum.Enum):
    """The kinds of connect failure, each with its own handling."""

    #: SQLSTATE 53300 in any wording: back off and retry inside the deadline.
    CONNECTION_LIMIT = "connection limit reached"
    #: 57P03, refused, reset, timeout, proxy throttling: back off and retry.
    UNAVAILABLE = "database unavailable"
    #: Wrong password or an expired/invalid token: refresh the credentials once.
    AUTHENTICATION = "authentication failed"
    #: Misconfiguration (unknown database or role, TLS required, bad certificate): no retry.
    CONFIGURATION = "configuration error"
    #: Anything else: propagate unchanged.
    OTHER = "other error"


# SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html)
TOO_MANY_CONNECTIONS = "53300"
CANNOT_CONNECT_NOW = "57P03"
ADMIN_SHUTDOWN = "57P01"
CRASH_SHUTDOWN = "57P02"
INVALID_PASSWORD = "28P01"  # noqa: S105 (a SQLSTATE)
INVALID_AUTHORIZATION = "28000"
INVALID_CATALOG_NAME = "3D000"
SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
_DISCONNECT_CODES = (ADMIN_SHUTDOWN, CRASH_SHUTDOWN, CANNOT_CONNECT_NOW)

_LIMIT_WORDINGS = (
    "too many connections for role",
    "too many connections for database",
    "sorry, too many clients already",
    "remaining connection slots are reserved",  # PG <= 15 and >= 16 wordings share this
    "too many connections",
)
# RDS Proxy's own wordings are from the "Troubleshooting for RDS Proxy" table
# (awsdocs/amazon-rds-user-guide, doc_source/rds-proxy.troubleshooting.md); seen in the
# wild e.g. in guardian/pinboard#352 ("The IAM authentication failed because of too many
# competing requests.").
_THROTTLED_WORDINGS = (
    # RDS Proxy and RDS rate-limit IAM logins and new connections; waiting is the cure.
    "too many competing requests",  # RDS Proxy: IAM logins
    "rate of connection to proxy exceeded",  # RDS Proxy: connection rate
    "maximum number of client connections to the proxy exceeded",  # RDS Proxy
    "rate exceeded",
    "throttl",
)
_UNAVAILABLE_WORDINGS = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "connection refused",
    "connection reset",
    "timeout expired",
    "timed out",
    "timed-out",  # RDS Proxy: "Timed-out waiting to acquire database connection"
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "no route to host",
    "network is unreachable",
    "terminating connection",
    "ssl syscall error",
    "eof detected",
)
_AUTH_WORDINGS = (
    "password authentication failed",
    # RDS instance IAM auth answers a bad or expired token with PAM's verdict.
    "pam authentication failed",
    # RDS Proxy: "IAM authentication failed for user u. Check the IAM token ..." and
    # "The IAM authentication failed for the role r. Check the IAM token ...".
    "iam authentication failed",
    # RDS Proxy: "The password that was provided for the role r is wrong." (a rotated secret).
    "password that was provided for the role",
    "authentication failed",
    "the iam authentication token",
    "token has expired",
    "signature expired",
)
_CONFIG_WORDINGS = (
    "does not exist",  # database or role
    "allowed only with ssl",  # RDS Proxy: "IAM [authentication] is allowed only with SSL ..."
    "requires tls connections",  # RDS Proxy with RequireTLS: "This RDS Proxy requires TLS ..."
    "supports only iam",  # RDS Proxy: "RDS [Proxy] supports only IAM, MD5, or SCRAM ..."
    "user name is missing from the connection startup packet",  # RDS Proxy
    "feature not supported: rds proxy",  # RDS Proxy: protocol, replication, startup options
    "no pg_hba.conf entry",
    # RDS instance: an rds_iam role over a non-TLS link ("... SSL off" / "no encryption");
    # reported in rust-postgres/rust-postgres#1108 and brianc/node-postgres#1843.
    "pg_hba.conf rejects connection",
    "certificate verify failed",
    "does not match host name",
    "root certificate file",
    "could not translate host name",
    "server does not support ssl",
    "sslmode value",
    "invalid connection option",
    "unsupported startup parameter",
    "has no credentials for the role",  # RDS Proxy: the role is not in the proxy's secrets
)


def classify(info: ErrorInfo | None) -> Failure:
    """Classify what a driver said about a failed connect.

    >>> classify(ErrorInfo(None, 'FATAL:  too many connections for role "myapp"', True, False))
    <Failure.CONNECTION_LIMIT: 'connection limit reached'>
    """
    if info is None:
        return Failure.OTHER
    code = info.sqlstate
    if code == TOO_MANY_CONNECTIONS:
        return Failure.CONNECTION_LIMIT
    if code in (CANNOT_CONNECT_NOW, ADMIN_SHUTDOWN, CRASH_SHUTDOWN) or (code or "").startswith(
        "08"
    ):
        return Failure.UNAVAILABLE
    if code == INVALID_PASSWORD:
        return Failure.AUTHENTICATION
    if code == INVALID_CATALOG_NAME:
        return Failure.CONFIGURATION
    message = info.message.lower()
    # Order matters: a throttled IAM login reads "...authentication failed: too many
    # competing requests" and must wait, not refresh.
    for kind, wordings in (
        (Failure.CONNECTION_LIMIT, _LIMIT_WORDINGS),
        (Failure.UNAVAILABLE, _THROTTLED_WORDINGS),
        (Failure.CONFIGURATION, _CONFIG_WORDINGS),
        (Failure.AUTHENTICATION, _AUTH_WORDINGS),
        (Failure.UNAVAILABLE, _UNAVAILABLE_WORDINGS),
    ):
        if any(w in message for w in wordings):
            return kind
    if code == INVALID_AUTHORIZATION:
        return Failure.AUTHENTICATION
    if info.operational and code is None:
        return Failure.UNAVAILABLE  # libpq-level failure with no server verdict
    return Failure.OTHER


def disconnected(info: ErrorInfo | None) -> bool:
    """True when the error means the connection is gone (so: reconnect, never retry it).

    SQLSTATE class 08 and the shutdown codes (``57P01`` is what ``pg_terminate_backend``
    sends) cover the cases where the socket is still open; an operational error with no
    SQLSTATE is libpq's own verdict on the link.
    """
    if info is None:
        return False
    if info.closed:
        return True
    code = info.sqlstate or ""
    if code in _DISCONNECT_CODES or code.startswith("08"):
        return True
    if info.operational and not code:
        message = info.message.lower()
        return any(w in message for w in _UNAVAILABLE_WORDINGS)
    return False


def classify_connect_error(exc: BaseException, driver: Driver | None = None) -> Failure:
    """Classify an exception raised while connecting (psycopg2's unless ``driver`` says).

    >>> import psycopg2
    >>> classify_connect_error(psycopg2.OperationalError(
    ...     'connection to server at "db" failed: FATAL:  too many connections for role "myapp"'))
    <Failure.CONNECTION_LIMIT: 'connection limit reached'>
    """
    return classify((driver or get_driver("psycopg2")).error_info(exc))


def is_disconnect(
    exc: BaseException, conn: object | None = None, driver: Driver | None = None
) -> bool:
    """True when ``exc`` (psycopg2's unless ``driver`` says) or ``conn`` shows the link is gone."""
    driver = driver or get_driver("psycopg2")
    if conn is not None and driver.closed(conn):
        return True
    return disconnected(driver.error_info(exc))


def brief(exc: BaseException) -> str:
    """The exception's type and first line, for a log line or a wrapping error's message.

    >>> brief(ValueError("first" + chr(10) + "second"))
    'ValueError: first'
    """
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def driver_error(exc: BaseException | None, driver: Driver) -> ErrorInfo | None:
    """What the first driver exception in ``exc``'s ``__cause__`` chain says: ``exc``
    itself, or what a library (SQLAlchemy) or the handler wrapped ``from`` it."""
    seen = exc
    for _ in range(8):  # a cause chain is short; a cycle must not loop forever
        if seen is None:
            return None
        info = driver.error_info(seen)
        if info is not None:
            return info
        seen = seen.__cause__
    return None


def conflict(exc: BaseException, driver: Driver) -> bool:
    """True when ``exc``, or an exception in its ``__cause__`` chain, is a serialization
    failure (``40001``) or a deadlock (``40P01``): running the transaction again may succeed.
    """
    info = driver_error(exc, driver)
    return info is not None and info.sqlstate in (SERIALIZATION_FAILURE, DEADLOCK_DETECTED)
