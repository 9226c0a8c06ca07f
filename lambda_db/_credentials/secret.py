"""``DB_AUTH_MODE=secret``: the login from an RDS secret in Secrets Manager, with rotation.

An RDS secret is JSON with ``username``, ``password`` and usually ``engine``, ``host``,
``port``, ``dbname`` (decoded and checked by ``_secret_value.py``). The secret names the
login; the ``DB_*`` variables, when set, win for host, port and database (the connect
layer merges them).

**Caching.** The value is reused for ``settings.secret_max_age`` seconds
(``DB_SECRET_MAX_AGE``, default 300) on a monotonic clock. When the server refuses the
password -- the rotation case: the function still holds the old one -- the connect loop
asks once with ``refresh=True``, which bypasses the cache, and retries once. A second
refusal is an :class:`~lambda_db.errors.AuthenticationError` naming the secret's ARN,
never its value.

**Within the caller's budget.** ``get(budget=...)`` finishes or fails within ``budget``
seconds (what is left of the invocation's connect budget; ``None``:
:attr:`SecretProvider.DEFAULT_BUDGET`). Each ``GetSecretValue`` attempt gets connect and
read timeouts cut to fit what is left (at most :attr:`~SecretProvider.CONNECT_TIMEOUT`
and :attr:`~SecretProvider.READ_TIMEOUT`), botocore's own retries are off, and at most
:attr:`~SecretProvider.MAX_ATTEMPTS` attempts are made, with full-jitter waits between
them that count against the budget too (``lambda_db._credentials._budget``). AWS
credentials from the container endpoint (SnapStart) are read inside the same budget.

**A failed fetch is remembered** for :attr:`~SecretProvider.NEGATIVE_TTL` seconds: within
that period ``get()`` fails at once with the same kind of error, saying it is remembered
and since when, without a network attempt. A dead endpoint costs one bounded wait per
period, not one per invocation.

**A failed max-age refresh falls back to the previous value** when the failure is
transient (Secrets Manager unreachable, silent, throttling, 5xx), with a WARNING: the
password in hand was working, and a rotation is not made invisible by it, since a refused
password brings ``refresh=True``, which never uses the previous value. The refresh may
then spend only :attr:`~SecretProvider.STALE_BUDGET_SHARE` of the budget, leaving the rest
to connect with the previous value. A permanent failure (access denied, secret deleted,
not an RDS secret) is raised even with a previous value in hand: it is a configuration
change someone must see, not something to hide until the next rotation breaks the
function at a worse moment. (AWS's own caching client, aws-secretsmanager-caching-python,
serves the previous value after any failed refresh and backs off its retries.)

boto3 is not used: one botocore session per provider makes the Secrets Manager clients
(:class:`~lambda_db._credentials._aws.AwsSession`), imported on the first fetch only.

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
from collections.abc import Callable
from typing import Any

from lambda_db._credentials._aws import AwsSession, container_endpoint
from lambda_db._credentials._aws_errors import aws_errors, failure_reason, is_transient
from lambda_db._credentials._budget import Attempts, Bounds, FailureMemory
from lambda_db._credentials._quiet import SENSITIVE_LOGGERS, muted_loggers
from lambda_db._credentials._secret_value import arn_region, decode_secret, parse_secret
from lambda_db._credentials.base import Credentials
from lambda_db.config import ENV_AWS_REGION, ENV_REGION, ENV_SECRET_ARN, Settings
from lambda_db.errors import ConfigurationError, DatabaseUnavailableError

__all__ = ["SecretProvider"]

logger = logging.getLogger(__name__)


class SecretProvider:
    """Credentials read from the RDS secret ``settings.secret_arn``.

    ``client`` is an optional Secrets Manager client, used as given (its timeouts and
    retries are its own; the budget still bounds the attempts made with it); ``clock``
    is monotonic seconds (cache age, negative period, the fetch's deadline) and
    ``sleep`` waits between attempts. ``fetches`` counts ``GetSecretValue`` calls made,
    retries included: the stable interface for tests and the bench.

    Example::

        provider = SecretProvider(settings)          # what DB_AUTH_MODE=secret builds
        creds = provider.get(budget=2.0)             # cached for secret_max_age seconds
        creds = provider.get(refresh=True)           # after a refused password: refetch
    """

    mode = "secret"
    refreshable = True
    sensitive = True

    #: Seconds to open a connection to Secrets Manager (less when the budget is short).
    CONNECT_TIMEOUT = 2.0
    #: Seconds to wait for its answer (less when the budget is short).
    READ_TIMEOUT = 5.0
    #: Most ``GetSecretValue`` attempts per fetch.
    MAX_ATTEMPTS = 3
    #: The budget of a fetch when the caller gives none (``budget=None``).
    DEFAULT_BUDGET = 10.0
    #: Seconds a failed fetch is remembered: no new attempt until they have passed.
    NEGATIVE_TTL = 10.0
    #: With a previous value in hand, the share of the budget a max-age refresh may use.
    STALE_BUDGET_SHARE = 0.5

    def __init__(
        self,
        settings: Settings,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._arn = settings.secret_arn or ""
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._aws = AwsSession()
        self._failures = FailureMemory()
        self._cached: Credentials | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"<SecretProvider {self._arn}>"

    # -- the CredentialProvider protocol ----------------------------------------------

    def get(self, *, refresh: bool = False, budget: float | None = None) -> Credentials:
        """The secret's login, from the cache unless it is older than ``secret_max_age``.

        Finishes or fails within ``budget`` seconds. Raises :class:`ConfigurationError`
        (naming ``DB_SECRET_ARN``) when the secret cannot be read for a reason waiting
        will not cure or is not an RDS secret, and :class:`DatabaseUnavailableError`
        when Secrets Manager is unreachable, silent or throttling; both name the endpoint
        and how long the fetch waited, and are remembered for ``NEGATIVE_TTL`` seconds.
        """
        with self._lock:
            now = self._clock()
            cached = self._cached
            age = now - self._fetched_at
            if cached is not None and not refresh and age < self._settings.secret_max_age:
                return cached
            stale = None if refresh else cached
            remembered = self._failures.active(now, self.NEGATIVE_TTL)
            if remembered is not None:
                if stale is not None and isinstance(remembered, DatabaseUnavailableError):
                    return stale
                raise self._failures.recalled(now, self.NEGATIVE_TTL) from remembered
            if stale is not None and budget is not None:
                budget *= self.STALE_BUDGET_SHARE
            if budget is not None and budget < Bounds.MIN_ATTEMPT:
                if stale is not None:
                    return stale
                raise DatabaseUnavailableError(
                    f"no time left to read the secret {self._arn}: {budget:.2f} s of the "
                    f"connect budget remained, an attempt needs {Bounds.MIN_ATTEMPT:g} s",
                    budget=budget,
                )
            try:
                credentials = parse_secret(self._arn, self._fetch(budget))
            except DatabaseUnavailableError as exc:
                self._failures.remember(exc, at=self._clock())
                if stale is None:
                    raise
                logger.warning(
                    "could not refresh the secret %s (%s); using the value read %.0f s ago "
                    "(a refused password still refetches, and never uses it); next "
                    "attempt in %.0f s",
                    self._arn, exc, age, self.NEGATIVE_TTL,
                )  # fmt: skip
                return stale
            except ConfigurationError as exc:
                self._failures.remember(exc, at=self._clock())
                raise
            self._failures.forget()
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
        """Forget the cached value, the botocore session and any remembered failure
        (SnapStart restore: new credentials; tests)."""
        with self._lock:
            self._cached = None
            self._aws = AwsSession()
            self._failures.forget()

    # -- fetching -------------------------------------------------------------------------

    def _bounds(self) -> Bounds:
        return Bounds(self.CONNECT_TIMEOUT, self.READ_TIMEOUT, self.MAX_ATTEMPTS,
                      self.DEFAULT_BUDGET)  # fmt: skip

    def _fetch(self, budget: float | None) -> Any:
        """The decoded secret, within ``budget`` seconds; every error made ours."""
        if not self._arn:
            raise ConfigurationError(
                f"{ENV_SECRET_ARN} is not set; 'secret' auth mode needs it",
                variable=ENV_SECRET_ARN,
            )
        bounds = self._bounds()
        attempts = Attempts(bounds, budget, clock=self._clock, sleep=self._sleep)
        where = "Secrets Manager"
        last: BaseException | None = None
        for attempt in attempts:
            where = self._credentials_source()
            try:
                client = self._client or self._own_client(bounds, attempts)
                where = f"Secrets Manager at {client.meta.endpoint_url}"
                self.fetches += 1
                with muted_loggers(*SENSITIVE_LOGGERS):
                    response = client.get_secret_value(SecretId=self._arn)
            except aws_errors() as exc:
                if not is_transient(exc):
                    raise self._permanent_error(exc, where, attempts) from exc
                last = exc
                logger.info(
                    "attempt %d to read the secret %s from %s failed after %.2f s (%s)",
                    attempt, self._arn, where, attempts.elapsed(), failure_reason(exc),
                )  # fmt: skip
                continue
            return decode_secret(self._arn, response)
        raise DatabaseUnavailableError(
            f"could not read the secret {self._arn}: {where} failed "
            f"({failure_reason(last)}) on each of {attempts.summary()}. A function in a "
            f"VPC needs a NAT gateway or a Secrets Manager interface endpoint; retry later",
            budget=attempts.budget,
        ) from last

    def _own_client(self, bounds: Bounds, attempts: Attempts) -> Any:
        """Our Secrets Manager client for this attempt, AWS credentials read first (so that
        a container credentials request and the call each fit in what is left)."""
        if self._aws.credentials(attempts.remaining) is None:
            raise self._no_credentials()
        timeouts = bounds.timeouts(attempts.remaining())
        client = self._aws.client("secretsmanager", self._region(), timeouts)
        if sum(timeouts) > attempts.remaining():
            # The first client of a cold start loads the service model (about 100 ms):
            # what it took no longer fits. The next one costs about a millisecond.
            timeouts = bounds.timeouts(attempts.remaining())
            client = self._aws.client("secretsmanager", self._region(), timeouts)
        return client

    def _region(self) -> str | None:
        return arn_region(self._arn) or self._settings.region

    def _credentials_source(self) -> str:
        url = container_endpoint()
        return f"the container credentials endpoint {url}" if url else "AWS credentials"

    def _no_credentials(self) -> ConfigurationError:
        return ConfigurationError(
            f"no AWS credentials to read the secret {self._arn} with "
            f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, container or instance role); "
            f"Lambda provides them from the function's role",
            variable="AWS_ACCESS_KEY_ID",
        )

    def _permanent_error(
        self, cause: BaseException, where: str, attempts: Attempts
    ) -> ConfigurationError:
        """Our error for a failure waiting will not cure (``cause``: what botocore raised)."""
        from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

        if isinstance(cause, NoRegionError):
            return ConfigurationError(
                f"no region to read the secret {self._arn} from: give {ENV_SECRET_ARN} as "
                f"a full ARN, or set {ENV_REGION} or {ENV_AWS_REGION}",
                variable=ENV_SECRET_ARN,
            )
        if isinstance(cause, NoCredentialsError):
            return self._no_credentials()
        if isinstance(cause, ClientError):
            return ConfigurationError(
                f"cannot read the secret {self._arn}: {where} answered "
                f"{failure_reason(cause)} (after {attempts.elapsed():.2f} s). Check "
                f"{ENV_SECRET_ARN}, secretsmanager:GetSecretValue on it in the function's "
                f"role, and kms:Decrypt when it is encrypted with a customer-managed key",
                variable=ENV_SECRET_ARN,
            )
        return ConfigurationError(
            f"cannot read the secret {self._arn}: {where} failed ({failure_reason(cause)})",
            variable=ENV_SECRET_ARN,
        )
