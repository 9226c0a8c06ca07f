"""Open one connection, retrying what waiting can cure, inside one deadline.

* full server/role/database (53300), starting up (57P03), refused, reset, timed out,
  throttled IAM logins: full-jitter backoff (:class:`~lambda_db._backoff.Backoff`), as
  long as the next attempt can start before the deadline;
* authentication failure: one immediate retry with refreshed credentials when the
  provider can refresh (rotated secret, expired token), then :class:`AuthenticationError`;
* unknown database or role, TLS misconfiguration: :class:`ConfigurationError`, no retry;
* anything else: propagates unchanged.

The first attempt never sleeps: replacing a connection the server killed is immediate.
When the budget runs out, the error is :class:`ConnectionLimitError` if any attempt met a full
server (the last one may have been cut short by the budget, which says nothing new).

How to open one connection is the driver's business (:mod:`lambda_db._driver`); the
connection parameters are libpq's, the same for every driver.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from lambda_db._backoff import Backoff
from lambda_db._classify import Failure, classify
from lambda_db._credentials import CredentialProvider, Credentials
from lambda_db._driver import Driver
from lambda_db.config import (
    ENCRYPTED_SSLMODES,
    ENV_ALLOW_INSECURE,
    ENV_HOST,
    ENV_NAME,
    ENV_SSLMODE,
    Settings,
    is_loopback,
)
from lambda_db.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLimitError,
    DatabaseUnavailableError,
)

__all__ = ["ConnectResult", "connect_with_retry", "connect_kwargs"]

logger = logging.getLogger(__name__)

#: libpq rounds connect_timeout to whole seconds and treats anything below 2 as 2.
_LIBPQ_MIN_CONNECT_TIMEOUT = 2
#: No new attempt starts with less than this left of the budget (seconds).
MIN_ATTEMPT = 0.05


class ConnectResult(NamedTuple):
    """A new connection and what it took to get it."""

    connection: Any
    attempts: int
    retries: int
    refreshed: bool
    seconds: float


#: Seconds of TCP silence before the kernel gives up on the connection, outside an
#: invocation's deadline (inside one, the watchdog cuts sooner): the same window as the
#: keepalives below (30 s idle + 3 probes 10 s apart).
TCP_USER_TIMEOUT = 60.0


def connect_kwargs(
    settings: Settings, credentials: Credentials, *, remaining: float
) -> dict[str, Any]:
    """libpq's connection parameters (the password travels only here).

    Nothing in them changes a session setting: ``options`` is sent empty, so that a
    ``PGOPTIONS`` in the environment cannot add startup options (RDS Proxy rejects them,
    and session settings would pin it); ``application_name`` is a plain startup parameter.

    Raises :class:`ConfigurationError` when a required value is missing or when a
    sensitive credential would cross a non-encrypted link to a remote host.
    """
    host = settings.host or credentials.host or ""
    dbname = settings.dbname or credentials.dbname or ""
    port = settings.port if settings.host or not credentials.port else credentials.port
    if not host:
        raise ConfigurationError(f"{ENV_HOST} is not set and the credentials name no host",
                                 variable=ENV_HOST)  # fmt: skip
    if not dbname:
        raise ConfigurationError(f"{ENV_NAME} is not set and the credentials name no database",
                                 variable=ENV_NAME)  # fmt: skip
    sslmode = settings.effective_sslmode(host)
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "dbname": dbname,
        "user": credentials.user,
        "password": credentials.password,
        "sslmode": sslmode,
        "application_name": settings.application_name[:63],
        "connect_timeout": max(
            _LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(min(settings.connect_timeout, remaining))
        ),
        "options": "",
        # Between invocations the environment is frozen and keepalives cannot run; they,
        # and TCP_USER_TIMEOUT, bound waits on a dead peer outside an invocation (inside
        # one, the watchdog does, at the invocation's deadline).
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": int(TCP_USER_TIMEOUT * 1000),
    }
    if sslmode in ("verify-ca", "verify-full"):
        kwargs["sslrootcert"] = settings.sslrootcert or _default_ca_bundle()
    elif settings.sslrootcert:
        kwargs["sslrootcert"] = settings.sslrootcert
    return kwargs


def _default_ca_bundle() -> str:
    """certifi's bundle: it holds the Amazon Trust Services roots RDS Proxy presents."""
    import certifi

    return str(certifi.where())


def check_transport(settings: Settings, provider: CredentialProvider, host: str) -> None:
    """Refuse to send a token or a secret's password in clear text to a remote host."""
    sslmode = settings.effective_sslmode(host)
    if (
        provider.sensitive
        and not settings.allow_insecure_transport
        and not is_loopback(host)
        and sslmode not in ENCRYPTED_SSLMODES
    ):
        raise ConfigurationError(
            f"refusing to send {provider.mode} credentials to {host} with "
            f"{ENV_SSLMODE}={sslmode}: use require, verify-ca or verify-full "
            f"(the default), or set {ENV_ALLOW_INSECURE}=true to accept the risk",
            variable=ENV_SSLMODE,
        )


def connect_with_retry(
    settings: Settings,
    provider: CredentialProvider,
    driver: Driver,
    *,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff | None = None,
) -> ConnectResult:
    """Open a connection before ``deadline`` (a ``clock()`` value), or raise a typed error."""
    backoff = backoff or Backoff()
    start = clock()
    budget = max(0.0, deadline - start)
    attempts = retries = 0
    refresh = refreshed = False
    full = 0  # attempts that met a full server, role or database
    if settings.host:  # refuse before minting a token or fetching a secret
        check_transport(settings, provider, settings.host)
    if budget <= 0:
        raise DatabaseUnavailableError(
            f"no time left to connect to {settings.host or 'the database'}: the budget was "
            f"spent before the first attempt (raise the function's timeout or lower "
            f"DB_DEADLINE_MARGIN)",
            attempts=0,
            budget=budget,
        )
    while True:
        attempts += 1
        credentials = provider.get(refresh=refresh, budget=deadline - clock())
        refresh = False
        remaining = deadline - clock()
        kwargs = connect_kwargs(settings, credentials, remaining=remaining)
        if not settings.host:  # the host came with the credentials: check it now
            check_transport(settings, provider, kwargs["host"])
        # libpq counts connect_timeout in whole seconds (at least 2); the driver bounds
        # the attempt exactly, by the smaller of connect_timeout and the budget left.
        try:
            conn = driver.connect(
                kwargs, timeout=max(0.0, min(settings.connect_timeout, remaining))
            )
        except Exception as exc:
            info = driver.error_info(exc)
            if info is None:
                raise
            failure = classify(info)
            where = f"{kwargs['host']}:{kwargs['port']}/{kwargs['dbname']} as {kwargs['user']!r}"
            reason = _first_line(exc)
            if failure is Failure.AUTHENTICATION:
                if provider.refreshable and not refreshed and deadline - clock() > 0:
                    refresh = refreshed = True
                    logger.info(
                        "authentication failed for %s; retrying once with refreshed %s "
                        "credentials", where, provider.mode,
                    )  # fmt: skip
                    continue
                raise AuthenticationError(
                    f"authentication failed for {where}"
                    f"{' even after refreshing the credentials' if refreshed else ''}: "
                    f"{reason}. Check {provider.describe()}"
                ) from exc
            if failure is Failure.CONFIGURATION:
                raise ConfigurationError(
                    f"cannot connect to {where}: {reason}. This is not retried: check the "
                    f"DB_* settings (host, database, user, TLS)",
                    variable=_variable_for(reason),
                ) from exc
            if failure not in (Failure.CONNECTION_LIMIT, Failure.UNAVAILABLE):
                raise
            full += failure is Failure.CONNECTION_LIMIT
            # A wait that would overshoot is clamped, so the last attempt still starts
            # inside the budget; give up only when too little is left to try at all.
            now = clock()
            wait = min(backoff.delay(retries), deadline - now - MIN_ATTEMPT)
            if wait < 0:
                if full:
                    raise ConnectionLimitError(
                        f"could not connect to {where} within the {budget:.2f} s budget: the "
                        f"connection limit was reached on {full} of {attempts} attempt(s) "
                        f"(last error: {reason}). To free slots: "
                        f"lower the functions' reserved concurrency, put RDS Proxy in front, "
                        f"or find the holders with 'lambda-db doctor' run as another role "
                        f"(one with pg_monitor)",
                        attempts=attempts,
                        budget=budget,
                    ) from exc
                raise DatabaseUnavailableError(
                    f"could not connect to {where}: {failure.value} on each of {attempts} "
                    f"attempt(s) within the {budget:.2f} s budget (last error: {reason})",
                    attempts=attempts,
                    budget=budget,
                ) from exc
            retries += 1
            logger.info(
                "connect attempt %d to %s failed (%s: %s); retrying in %.3f s",
                attempts, where, failure.value, reason, wait,
            )  # fmt: skip
            sleep(wait)
            continue
        return ConnectResult(conn, attempts, retries, refreshed, clock() - start)


def _first_line(exc: BaseException) -> str:
    """The server's verdict without libpq's "connection to server at ... failed:" prefix
    (psycopg 3 adds a "connection failed:" of its own in front of it).

    >>> _first_line(Exception('connection failed: connection to server at "db", port 5432 '
    ...                       'failed: FATAL:  too many connections for role "app"'))
    'too many connections for role "app"'
    """
    text = " ".join(str(exc).split("\n")[:2]).strip()
    marker = "failed: "
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.replace("FATAL:  ", "").strip() or type(exc).__name__


def _variable_for(reason: str) -> str | None:
    lowered = reason.lower()
    if "database" in lowered:
        return ENV_NAME
    if "ssl" in lowered or "certificate" in lowered:
        return ENV_SSLMODE
    if "host name" in lowered:
        return ENV_HOST
    return None
