"""Configuration: one frozen :class:`Settings`, read from the environment or built in code.

An explicit argument beats an environment variable, which beats the default. Every
environment variable name lives here, as a constant, and a bad value raises
:class:`~lambda_db.errors.ConfigurationError` naming the variable. Times are float seconds.

Example::

    >>> s = Settings.from_env({"DB_HOST": "localhost", "DB_NAME": "app", "DB_USER": "app",
    ...                        "DB_PASSWORD": "s3cr3t"})
    >>> s.port, s.auth_mode, s.effective_sslmode()
    (5432, 'password', 'prefer')
    >>> "s3cr3t" in repr(s)                  # the password never shows
    False
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

from lambda_db.errors import ConfigurationError

__all__ = ["AuthMode", "Settings"]

logger = logging.getLogger(__name__)

AuthMode = Literal["password", "secret", "iam"]
AUTH_MODES: tuple[AuthMode, ...] = ("password", "secret", "iam")
#: DB-API drivers lambda-db can drive (``DB_DRIVER``): ``psycopg2`` (the default) or
#: ``psycopg`` (psycopg 3, the ``lambda-db[psycopg]`` extra; imported only when chosen).
DRIVERS = ("psycopg2", "psycopg")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: sslmodes that encrypt for certain; anything weaker may send credentials in clear text.
ENCRYPTED_SSLMODES = ("require", "verify-ca", "verify-full")

# Environment variable names: the one place they are spelled.
ENV_HOST = "DB_HOST"
ENV_PORT = "DB_PORT"
ENV_NAME = "DB_NAME"
ENV_USER = "DB_USER"
ENV_PASSWORD = "DB_PASSWORD"  # noqa: S105 (a variable name, not a password)
ENV_SECRET_ARN = "DB_SECRET_ARN"  # noqa: S105
ENV_AUTH_MODE = "DB_AUTH_MODE"
ENV_SSLMODE = "DB_SSLMODE"
ENV_SSLROOTCERT = "DB_SSLROOTCERT"
ENV_REGION = "DB_REGION"
ENV_AWS_REGION = "AWS_REGION"
ENV_APPLICATION_NAME = "DB_APPLICATION_NAME"
ENV_CONNECT_TIMEOUT = "DB_CONNECT_TIMEOUT"
ENV_CONNECT_BUDGET = "DB_CONNECT_BUDGET"
ENV_IDLE_PING_AFTER = "DB_IDLE_PING_AFTER"
ENV_MAX_AGE = "DB_MAX_AGE"
ENV_DEADLINE_MARGIN = "DB_DEADLINE_MARGIN"
ENV_LOCAL_STATEMENT_TIMEOUT = "DB_LOCAL_STATEMENT_TIMEOUT"
ENV_DRIVER = "DB_DRIVER"
ENV_SECRET_MAX_AGE = "DB_SECRET_MAX_AGE"  # noqa: S105
ENV_ALLOW_INSECURE = "DB_ALLOW_INSECURE_TRANSPORT"
ENV_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"

#: Variables of lambda-db 0.1 that no longer do anything, and what replaced them.
REMOVED = {
    "DB_STATEMENT_GUARD": "every statement is now bounded by the invocation's deadline",
    "DB_IDLE_IN_TRANSACTION_TIMEOUT": (
        "lambda-db no longer sends SET (it pins RDS Proxy): set it on the role instead, "
        "ALTER ROLE <user> SET idle_in_transaction_session_timeout = '60s'"
    ),
}

#: The deadline margin when DB_DEADLINE_MARGIN is unset (capped for short functions).
DEFAULT_DEADLINE_MARGIN = 1.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def is_loopback(host: str) -> bool:
    """True for ``localhost``, a loopback address, or a Unix-socket directory.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("db.example.com")
    (True, True, False)
    """
    if host.startswith("/") or host.lower() in ("localhost", "localhost.localdomain"):
        return True
    import ipaddress  # only here: it is not free at import time

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings:
    """Everything lambda-db needs to know to open and police one connection.

    Build it with :meth:`from_env` (what :func:`lambda_db.get_connection` does) or
    directly, with keyword arguments. It is immutable: :meth:`replace` makes a changed,
    re-validated copy. Unset ``sslmode`` resolves to ``verify-full`` for a remote host
    and ``prefer`` for a loopback one (see :meth:`effective_sslmode`). The password never
    appears in ``repr()``.

    A plain class with ``__slots__`` rather than a dataclass: ``dataclasses`` (and the
    ``inspect`` it imports) would cost about a fifth of ``import lambda_db``.

    Example::

        settings = Settings(host="localhost", dbname="app", user="app", password="...")
        db = lambda_db.Database(settings)
    """

    __slots__ = (
        "allow_insecure_transport",
        "application_name",
        "auth_mode",
        "connect_budget",
        "connect_timeout",
        "dbname",
        "deadline_margin",
        "driver",
        "host",
        "idle_ping_after",
        "local_statement_timeout",
        "max_age",
        "password",
        "port",
        "region",
        "secret_arn",
        "secret_max_age",
        "sslmode",
        "sslrootcert",
        "user",
    )

    host: str
    port: int
    dbname: str
    user: str
    auth_mode: AuthMode
    password: str | None
    secret_arn: str | None
    sslmode: str | None
    sslrootcert: str | None
    region: str | None
    application_name: str
    #: libpq's connect_timeout for one attempt (lambda-db bounds it exactly).
    connect_timeout: float
    #: Budget for connecting (all retries) outside Lambda, or when no context is given.
    connect_budget: float
    #: Ping with ``SELECT 1`` only when the connection has been idle this long.
    idle_ping_after: float
    #: Replace a connection older than this (``0`` disables recycling).
    max_age: float
    #: Time kept free before the Lambda deadline: retries and statement_timeout stop here.
    #: ``None`` (the default): 1 s, or a quarter of the time left when that is less.
    deadline_margin: float | None
    #: Opt-in: ``SET LOCAL statement_timeout`` to the time left, in each transaction. It
    #: pins RDS Proxy: for direct connections only (role defaults are the pin-free way).
    local_statement_timeout: bool
    #: The DB-API driver: ``psycopg2`` (the default) or ``psycopg`` (psycopg 3; see DRIVERS).
    driver: str
    #: How long a Secrets Manager value is cached.
    secret_max_age: float
    #: Allow credentials over a non-encrypted link to a non-loopback host.
    allow_insecure_transport: bool

    def __init__(
        self,
        *,
        host: str = "",
        port: int = 5432,
        dbname: str = "",
        user: str = "",
        auth_mode: AuthMode = "password",
        password: str | None = None,
        secret_arn: str | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        region: str | None = None,
        application_name: str = "lambda-db",
        connect_timeout: float = 5.0,
        connect_budget: float = 10.0,
        idle_ping_after: float = 2 * 60.0,
        max_age: float = 30 * 60.0,
        deadline_margin: float | None = None,
        secret_max_age: float = 5 * 60.0,
        allow_insecure_transport: bool = False,
        local_statement_timeout: bool = False,
        driver: str = "psycopg2",
    ) -> None:
        values = dict(locals())
        del values["self"]
        _validate(values)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings is immutable; use settings.replace({name}=...)")

    def _values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values().items())))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in _REPR_ORDER if name != "password"
        )
        return f"Settings({shown})"

    # -- reading the environment -------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the ``DB_*`` variables; keyword ``overrides`` win over the environment.

        Only syntax is checked here. Whether the variables a mode needs are present is
        checked by :meth:`validate` at first use, so importing a handler never fails.
        """
        env = os.environ if environ is None else environ
        for variable, instead in REMOVED.items():
            if env.get(variable):
                logger.warning("%s is no longer used and was ignored: %s", variable, instead)
        function = env.get(ENV_FUNCTION_NAME)
        values: dict[str, Any] = {
            "host": env.get(ENV_HOST, ""),
            "port": _int(env, ENV_PORT, 5432),
            "dbname": env.get(ENV_NAME, ""),
            "user": env.get(ENV_USER, ""),
            "auth_mode": (env.get(ENV_AUTH_MODE) or "password").strip().lower(),
            "password": env.get(ENV_PASSWORD),
            "secret_arn": env.get(ENV_SECRET_ARN) or None,
            "sslmode": env.get(ENV_SSLMODE) or None,
            "sslrootcert": env.get(ENV_SSLROOTCERT) or None,
            "region": env.get(ENV_REGION) or env.get(ENV_AWS_REGION) or None,
            "application_name": env.get(ENV_APPLICATION_NAME)
            or (f"lambda-db:{function}" if function else "lambda-db"),
            "connect_timeout": _float(env, ENV_CONNECT_TIMEOUT, 5.0),
            "connect_budget": _float(env, ENV_CONNECT_BUDGET, 10.0),
            "idle_ping_after": _float(env, ENV_IDLE_PING_AFTER, 2 * 60.0),
            "max_age": _float(env, ENV_MAX_AGE, 30 * 60.0),
            "deadline_margin": _optional_float(env, ENV_DEADLINE_MARGIN),
            "secret_max_age": _float(env, ENV_SECRET_MAX_AGE, 5 * 60.0),
            "allow_insecure_transport": _bool(env, ENV_ALLOW_INSECURE),
            "local_statement_timeout": _bool(env, ENV_LOCAL_STATEMENT_TIMEOUT),
            "driver": (env.get(ENV_DRIVER) or "psycopg2").strip().lower(),
        }
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated again).

        >>> Settings(host="h").replace(port=6432).port
        6432
        """
        return Settings(**{**self._values(), **changes})

    # -- checks made at first use --------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` naming the first missing variable.

        ``secret`` mode may take host, port and database name from the secret, so
        only ``DB_SECRET_ARN`` is required there.
        """
        required: list[tuple[str, str]]
        if self.auth_mode == "secret":
            required = [(ENV_SECRET_ARN, self.secret_arn or "")]
        else:
            required = [(ENV_HOST, self.host), (ENV_NAME, self.dbname), (ENV_USER, self.user)]
            if self.auth_mode == "password":
                required.append((ENV_PASSWORD, "set" if self.password is not None else ""))
        for variable, value in required:
            if not value:
                raise ConfigurationError(
                    f"{variable} is not set; {self.auth_mode!r} auth mode needs it "
                    f"(set it in the function's environment, or pass it to Settings)",
                    variable=variable,
                )

    def margin_for(self, remaining: float | None) -> float:
        """The deadline margin for an invocation with ``remaining`` seconds left.

        An explicit ``deadline_margin`` is used as given; the default is
        :data:`DEFAULT_DEADLINE_MARGIN`, capped at a quarter of the time left so that a
        short function (Lambda allows 1 s) still has time to connect.

        >>> Settings().margin_for(60.0), Settings().margin_for(1.0)
        (1.0, 0.25)
        >>> Settings(deadline_margin=30.0).margin_for(60.0)
        30.0
        """
        if self.deadline_margin is not None:
            return self.deadline_margin
        if remaining is None:
            return DEFAULT_DEADLINE_MARGIN
        return min(DEFAULT_DEADLINE_MARGIN, remaining * 0.25)

    def effective_sslmode(self, host: str | None = None) -> str:
        """The sslmode used for ``host``: explicit ``sslmode``, else by where the host is.

        >>> Settings(host="proxy.example.com").effective_sslmode()
        'verify-full'
        >>> Settings(host="127.0.0.1").effective_sslmode()
        'prefer'
        """
        if self.sslmode:
            return self.sslmode
        return "prefer" if is_loopback(host or self.host) else "verify-full"


_REPR_ORDER = (
    "host", "port", "dbname", "user", "auth_mode", "secret_arn", "sslmode", "sslrootcert",
    "region", "application_name", "connect_timeout", "connect_budget", "idle_ping_after",
    "max_age", "deadline_margin", "secret_max_age", "allow_insecure_transport",
    "local_statement_timeout", "driver",
)  # fmt: skip

# (field, variable, smallest allowed, inclusive?)
_NUMBERS = (
    ("connect_timeout", ENV_CONNECT_TIMEOUT, 0.0, False),
    ("connect_budget", ENV_CONNECT_BUDGET, 0.0, False),
    ("idle_ping_after", ENV_IDLE_PING_AFTER, 0.0, True),
    ("max_age", ENV_MAX_AGE, 0.0, True),
    ("deadline_margin", ENV_DEADLINE_MARGIN, 0.0, True),
    ("secret_max_age", ENV_SECRET_MAX_AGE, 0.0, True),
)


def _validate(values: dict[str, Any]) -> None:
    """Raise :class:`ConfigurationError` naming the variable of the first bad value."""
    if values["auth_mode"] not in AUTH_MODES:
        raise ConfigurationError(
            f"{ENV_AUTH_MODE} must be one of {', '.join(AUTH_MODES)}, got {values['auth_mode']!r}",
            variable=ENV_AUTH_MODE,
        )
    if values["driver"] not in DRIVERS:
        raise ConfigurationError(
            f"{ENV_DRIVER} must be one of {', '.join(DRIVERS)}, got {values['driver']!r}",
            variable=ENV_DRIVER,
        )
    if values["sslmode"] is not None and values["sslmode"] not in SSLMODES:
        raise ConfigurationError(
            f"{ENV_SSLMODE} must be one of {', '.join(SSLMODES)}, got {values['sslmode']!r}",
            variable=ENV_SSLMODE,
        )
    if not 0 < values["port"] < 65536:
        raise ConfigurationError(
            f"{ENV_PORT} must be a TCP port (1-65535), got {values['port']}", variable=ENV_PORT
        )
    for name, env, low, inclusive in _NUMBERS:
        value = values[name]
        if value is None and name == "deadline_margin":
            continue
        ok = math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise ConfigurationError(
                f"{env} ({name}) must be a finite number of seconds {bound}, got {value}",
                variable=env,
            )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}", variable=name) from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _optional_float(env, name)
    return default if value is None else value


def _optional_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name} must be a number of seconds, got {raw!r}", variable=name
        ) from None


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}", variable=name)
