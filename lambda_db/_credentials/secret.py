"""``DB_AUTH_MODE=secret``: the login from an RDS secret in Secrets Manager, with rotation.

An RDS secret is JSON with ``username``, ``password`` and usually ``engine``, ``host``,
``port``, ``dbname``. The secret names the login; the ``DB_*`` variables, when set, win
for host, port and database (the connect layer merges them).

The value is cached for ``settings.secret_max_age`` seconds (``DB_SECRET_MAX_AGE``,
default 300) on a monotonic clock. When the server refuses the password -- the rotation
case: the function still holds the old one -- the connect loop asks once with
``refresh=True``, which bypasses the cache, and retries once. A second refusal is an
:class:`~lambda_db.errors.AuthenticationError` naming the secret's ARN, never its value.

Reading goes through Powertools' ``parameters.SecretsProvider`` (``transform="json"``)
over a Secrets Manager client created on first use with short timeouts
(:attr:`SecretProvider.CONNECT_TIMEOUT` and friends): a function in a VPC without a NAT
gateway or a Secrets Manager endpoint fails in seconds with a message saying so, instead
of spending its whole timeout in botocore's default 60-second connect retries. boto3 and
Powertools' parameters module are imported only in this mode, on the first fetch.

Example::

    >>> from lambda_db.config import Settings
    >>> arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-db-AbCdEf"
    >>> p = SecretProvider(Settings(auth_mode="secret", secret_arn=arn))
    >>> p.mode, p.refreshable, p.sensitive, p.fetches
    ('secret', True, True, 0)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from lambda_db._credentials._aws import SENSITIVE_LOGGERS, muted_loggers
from lambda_db._credentials.base import Credentials
from lambda_db.config import ENV_AWS_REGION, ENV_REGION, ENV_SECRET_ARN, Settings
from lambda_db.errors import ConfigurationError, DatabaseUnavailableError

__all__ = ["SecretProvider"]

logger = logging.getLogger(__name__)

#: Secrets Manager error codes that waiting can cure.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


class SecretProvider:
    """Credentials read from the RDS secret ``settings.secret_arn``.

    ``client`` is an optional Secrets Manager client (boto3); ``clock`` is monotonic
    seconds for the cache. ``fetches`` counts ``GetSecretValue`` calls made -- the stable
    interface for tests and the bench.

    Example::

        provider = SecretProvider(settings)          # what DB_AUTH_MODE=secret builds
        creds = provider.get()                       # cached for secret_max_age seconds
        creds = provider.get(refresh=True)           # after a refused password: refetch
    """

    mode = "secret"
    refreshable = True
    sensitive = True

    #: Seconds to open a connection to Secrets Manager.
    CONNECT_TIMEOUT = 2.0
    #: Seconds to wait for its answer.
    READ_TIMEOUT = 5.0
    #: Total attempts per fetch (botocore's "standard" retry mode, jittered backoff).
    MAX_ATTEMPTS = 3

    def __init__(
        self,
        settings: Settings,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._arn = settings.secret_arn or ""
        self._client = client
        self._clock = clock
        self._powertools: Any = None
        self._cached: Credentials | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"<SecretProvider {self._arn}>"

    # -- the CredentialProvider protocol ----------------------------------------------

    def get(self, *, refresh: bool = False, budget: float | None = None) -> Credentials:
        """The secret's login, from the cache unless it is older than ``secret_max_age``.

        Raises :class:`ConfigurationError` (naming ``DB_SECRET_ARN``) when the secret
        cannot be read for a reason waiting will not cure or is not an RDS secret, and
        :class:`DatabaseUnavailableError` when Secrets Manager is unreachable or throttling.
        """
        with self._lock:
            now = self._clock()
            cached = self._cached
            max_age = self._settings.secret_max_age
            if cached is not None and not refresh and now - self._fetched_at < max_age:
                return cached
            value = self._fetch()
            credentials = self._parse(value)
            self._cached, self._fetched_at = credentials, now
        logger.info(
            "read database credentials for %r from %s (%s)",
            credentials.user, self._arn, "refresh" if refresh else "cache empty or expired",
        )  # fmt: skip
        return credentials

    def describe(self) -> str:
        user = self._cached.user if self._cached is not None else "?"
        return (
            f"the secret {self._arn} (username {user!r}): that its password is the role's "
            f"current one (a rotation that failed half-way leaves them apart), that its "
            f"username is the database role, and that the function's role may call "
            f"secretsmanager:GetSecretValue on it (and kms:Decrypt for a customer-managed key)"
        )

    def invalidate(self) -> None:
        """Forget the cached value (SnapStart restore; tests)."""
        with self._lock:
            self._cached = None

    # -- fetching and parsing -------------------------------------------------------------

    def _fetch(self) -> Any:
        """One ``GetSecretValue`` through Powertools, JSON-decoded; errors made ours."""
        if not self._arn:
            raise ConfigurationError(
                f"{ENV_SECRET_ARN} is not set; 'secret' auth mode needs it",
                variable=ENV_SECRET_ARN,
            )
        from aws_lambda_powertools.utilities.parameters.exceptions import (
            GetParameterError,
            TransformParameterError,
        )
        from botocore.exceptions import NoRegionError

        self.fetches += 1
        try:
            provider = self._secrets_provider()
            with muted_loggers(*SENSITIVE_LOGGERS):
                return provider.get(
                    self._arn,
                    transform="json",
                    max_age=int(self._settings.secret_max_age),
                    force_fetch=True,
                )
        except TransformParameterError as exc:
            raise ConfigurationError(
                f"the secret {self._arn} is not JSON: {ENV_SECRET_ARN} must name an RDS "
                f'secret ({{"username": ..., "password": ..., "host": ...}})',
                variable=ENV_SECRET_ARN,
            ) from exc
        except GetParameterError as exc:
            raise _fetch_error(self._arn, exc.__cause__ or exc.__context__ or exc) from exc
        except NoRegionError as exc:
            raise ConfigurationError(
                f"no region to read the secret {self._arn} from: give {ENV_SECRET_ARN} as a "
                f"full ARN, or set {ENV_REGION} or {ENV_AWS_REGION}",
                variable=ENV_SECRET_ARN,
            ) from exc

    def _secrets_provider(self) -> Any:
        if self._powertools is None:
            from aws_lambda_powertools.utilities import parameters

            self._powertools = parameters.SecretsProvider(boto3_client=self._make_client())
        return self._powertools

    def _make_client(self) -> Any:
        if self._client is not None:
            return self._client
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.CONNECT_TIMEOUT,
            read_timeout=self.READ_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": self.MAX_ATTEMPTS},
        )
        region = _arn_region(self._arn) or self._settings.region
        self._client = boto3.session.Session().client(
            "secretsmanager", region_name=region, config=config
        )
        return self._client

    def _parse(self, value: Any) -> Credentials:
        """Credentials from the decoded secret; the value never reaches a message."""
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"the secret {self._arn} is JSON but not an object: {ENV_SECRET_ARN} must "
                f"name an RDS secret with username and password",
                variable=ENV_SECRET_ARN,
            )
        missing = [k for k in ("username", "password") if not _nonempty_str(value.get(k))]
        if missing:
            raise ConfigurationError(
                f"the secret {self._arn} has no {' or '.join(missing)} (string): "
                f"{ENV_SECRET_ARN} must name an RDS secret",
                variable=ENV_SECRET_ARN,
            )
        port = value.get("port")
        try:
            port_number = int(port) if port not in (None, "") else None
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"the secret {self._arn} has a port that is not an integer",
                variable=ENV_SECRET_ARN,
            ) from None
        host, dbname = value.get("host"), value.get("dbname")
        return Credentials(
            user=value["username"],
            password=value["password"],
            host=host if _nonempty_str(host) else None,
            port=port_number,
            dbname=dbname if _nonempty_str(dbname) else None,
        )


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _arn_region(arn: str) -> str | None:
    """The region field of a Secrets Manager ARN (``None`` for a plain secret name).

    >>> _arn_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf")
    'eu-west-1'
    >>> _arn_region("prod/db") is None
    True
    """
    parts = arn.split(":")
    return parts[3] or None if arn.startswith("arn:") and len(parts) > 3 else None


def _fetch_error(arn: str, cause: BaseException) -> Exception:
    """Our error for a failed ``GetSecretValue`` (``cause``: what botocore raised)."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", "?"))
        message = str(error.get("Message", ""))
        if code in _TRANSIENT_CODES:
            return DatabaseUnavailableError(
                f"Secrets Manager could not serve {arn} ({code}); retry later"
            )
        return ConfigurationError(
            f"cannot read the secret {arn}: {code}: {message}. Check {ENV_SECRET_ARN}, "
            f"secretsmanager:GetSecretValue on it in the function's role, and kms:Decrypt "
            f"when it is encrypted with a customer-managed key",
            variable=ENV_SECRET_ARN,
        )
    if isinstance(cause, ConnectionError | HTTPClientError):
        return DatabaseUnavailableError(
            f"cannot reach Secrets Manager to read {arn} ({type(cause).__name__}): a function "
            f"in a VPC needs a NAT gateway or a Secrets Manager interface endpoint"
        )
    return ConfigurationError(
        f"cannot read the secret {arn} ({type(cause).__name__}: {cause})",
        variable=ENV_SECRET_ARN,
    )
