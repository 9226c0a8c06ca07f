"""``DB_AUTH_MODE=iam``: RDS IAM auth tokens, minted locally, cached until shortly before expiry.

A token is a SigV4 presigned URL for service ``rds-db``::

    HOST:PORT/?Action=connect&DBUser=USER&X-Amz-Algorithm=...&X-Amz-Expires=900&X-Amz-Signature=...

It is computed with botocore's query signer (``_iam_token.py``) and the credentials of
botocore's chain (environment variables in Lambda, the container endpoint under
SnapStart). No RDS client is created: ``boto3.client("rds")`` loads the RDS service
model, which is most of the cold start of the usual ``generate_db_auth_token`` path.
The result is byte-identical to ``boto3.client("rds").generate_db_auth_token(...)`` (a
test keeps it so).

The token is checked only when a connection is opened, so an open connection outlives it:
the provider is asked for credentials only by the connect loop and never on the warm path.
Tokens are reused until :attr:`IamTokenProvider.REFRESH_MARGIN` seconds before they expire
(direct-to-instance IAM logins and RDS Proxy both throttle token logins), keyed by host,
port, user, region and access key id, on a monotonic clock. ``get(refresh=True)`` -- what
the connect loop asks after an authentication failure -- always mints a new one.

**AWS credentials** are read at every mint: environment keys (ordinary Lambda) with no
network call; otherwise botocore's chain, whose container credentials request (SnapStart:
``AWS_CONTAINER_CREDENTIALS_FULL_URI``) is made within the caller's ``budget``, with
connect and read timeouts cut to fit and at most :attr:`IamTokenProvider.MAX_ATTEMPTS`
attempts (``lambda_db._credentials._budget``). A failed read is remembered for
:attr:`IamTokenProvider.NEGATIVE_TTL` seconds: ``get()`` then fails at once, saying so,
without a request. There is no stale fallback of our own: botocore already keeps using
the current AWS credentials when a refresh fails in its advisory window (15 to 10 minutes
before they expire), so what reaches us is a first read (no credentials to fall back on)
or a failure in the mandatory window (credentials about to expire).

botocore is imported lazily, on the first :meth:`~IamTokenProvider.get`; never by
``import lambda_db``. The token travels only as the ``password`` of
:class:`~lambda_db._credentials.base.Credentials` (``repr=False``) and is never logged:
botocore's own DEBUG lines about the signature are muted while we sign
(:func:`~lambda_db._credentials._iam_token.sign_token`,
:func:`~lambda_db._credentials._quiet.muted_loggers`).

Example::

    >>> from lambda_db.config import Settings
    >>> p = IamTokenProvider(Settings(host="proxy.example.com", dbname="app", user="app",
    ...                               auth_mode="iam", region="eu-west-1"))
    >>> p.mode, p.refreshable, p.sensitive, p.minted
    ('iam', True, True, 0)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from lambda_db._credentials._aws import AwsSession, container_endpoint
from lambda_db._credentials._aws_errors import aws_errors, failure_reason, is_transient
from lambda_db._credentials._budget import Attempts, Bounds, FailureMemory
from lambda_db._credentials._iam_token import sign_token
from lambda_db._credentials.base import Credentials
from lambda_db.config import ENV_AWS_REGION, ENV_REGION, Settings
from lambda_db.errors import ConfigurationError, DatabaseUnavailableError, LambdaDbError

__all__ = ["IamTokenProvider"]

logger = logging.getLogger(__name__)


class _AwsCredentials(NamedTuple):
    """The frozen triple botocore signs with (``botocore.credentials.ReadOnlyCredentials``)."""

    access_key: str
    secret_key: str
    token: str | None


@dataclass
class _CachedToken:
    token: str = field(repr=False)
    reuse_until: float


class IamTokenProvider:
    """Credentials whose password is an RDS IAM auth token for ``settings.user``.

    ``clock`` (monotonic seconds) decides when a cached token is too old to reuse, how
    long a failure is remembered, and the deadline of a credentials read; ``sleep`` waits
    between its attempts; ``credentials`` returns the AWS credentials to sign with
    (default: botocore's chain, read at every mint so that rotated or refreshed
    credentials are picked up). ``minted`` counts tokens signed (the stable interface
    for tests and the bench).

    Example::

        provider = IamTokenProvider(settings)       # what DB_AUTH_MODE=iam builds
        creds = provider.get(budget=2.0)            # Credentials(user='app', host=None, ...)
        psycopg2.connect(host=..., user=creds.user, password=creds.password, sslmode=...)
    """

    mode = "iam"
    refreshable = True
    sensitive = True

    #: Lifetime written into the token (``X-Amz-Expires``): RDS accepts at most 15 minutes.
    TOKEN_LIFETIME = 15 * 60.0
    #: A cached token is replaced this long before it expires.
    REFRESH_MARGIN = 60.0
    #: Most attempts to read AWS credentials from the container endpoint per mint.
    MAX_ATTEMPTS = 3
    #: The budget of that read when the caller gives none (``budget=None``).
    DEFAULT_BUDGET = 5.0
    #: Seconds a failed credentials read is remembered: no new request until they pass.
    NEGATIVE_TTL = 10.0

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        credentials: Callable[[], _AwsCredentials] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._credentials_source = credentials
        self._aws = AwsSession()
        self._failures = FailureMemory()
        self._tokens: dict[tuple[str, int, str, str, str], _CachedToken] = {}
        self._lock = threading.Lock()
        self.minted = 0

    def __repr__(self) -> str:
        s = self._settings
        return f"<IamTokenProvider {s.user!r}@{s.host}:{s.port} region={s.region!r}>"

    # -- the CredentialProvider protocol ----------------------------------------------

    def get(self, *, refresh: bool = False, budget: float | None = None) -> Credentials:
        """Credentials with a token that is valid for at least ``REFRESH_MARGIN`` seconds.

        Finishes or fails within ``budget`` seconds. Raises :class:`ConfigurationError`
        when no region or no AWS credentials can be found, and
        :class:`DatabaseUnavailableError` when reading them failed (the container
        credentials endpoint did not answer): it names the endpoint and how long the read
        waited, and is remembered for ``NEGATIVE_TTL`` seconds.
        """
        s = self._settings
        region = self._region()
        aws = self._aws_credentials(budget)
        key = (s.host, s.port, s.user, region, aws.access_key)
        with self._lock:
            now = self._clock()
            cached = self._tokens.get(key)
            if cached is not None and not refresh and now < cached.reuse_until:
                return Credentials(user=s.user, password=cached.token)
            token = sign_token(
                aws, host=s.host, port=s.port, user=s.user, region=region,
                expires=int(self.TOKEN_LIFETIME),
            )  # fmt: skip
            self._tokens = {
                k: v for k, v in self._tokens.items() if v.reuse_until > now and k != key
            }
            self._tokens[key] = _CachedToken(token, now + self.TOKEN_LIFETIME - self.REFRESH_MARGIN)
            self.minted += 1
        logger.info(
            "minted an IAM auth token for %r at %s:%s in %s (%s; reused for %.0f s)",
            s.user, s.host, s.port, region, "refresh" if refresh else "no usable cached token",
            self.TOKEN_LIFETIME - self.REFRESH_MARGIN,
        )  # fmt: skip
        return Credentials(user=s.user, password=token)

    def describe(self) -> str:
        s = self._settings
        return (
            f"the IAM auth token for database user {s.user!r} at {s.host}:{s.port} "
            f"({s.region or 'no region'}): the function's role needs rds-db:connect on "
            f"arn:aws:rds-db:{s.region or 'REGION'}:ACCOUNT:dbuser:prx-RESOURCEID/{s.user} "
            f"(db-RESOURCEID for an instance), IAM authentication must be enabled on the "
            f"proxy or instance, and through RDS Proxy the user needs a secret in the "
            f"proxy's auth list"
        )

    def invalidate(self) -> None:
        """Forget tokens, the botocore session and any remembered failure (SnapStart
        restore: credentials change)."""
        with self._lock:
            self._tokens.clear()
            self._aws = AwsSession()
            self._failures.forget()

    # -- helpers ---------------------------------------------------------------------------

    def _region(self) -> str:
        region = self._settings.region
        if not region:
            raise ConfigurationError(
                f"IAM database authentication needs a region: set {ENV_REGION} "
                f"(or {ENV_AWS_REGION}, which Lambda sets)",
                variable=ENV_REGION,
            )
        return region

    def _aws_credentials(self, budget: float | None) -> _AwsCredentials:
        """The AWS credentials to sign with: from the environment at no cost, otherwise
        from botocore's chain within ``budget`` (a failure is remembered)."""
        if self._credentials_source is not None:
            return self._credentials_source()
        frozen = AwsSession.environment_credentials()
        if frozen is not None:
            return _AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)
        with self._lock:
            now = self._clock()
            remembered = self._failures.active(now, self.NEGATIVE_TTL)
            if remembered is not None:
                raise self._failures.recalled(now, self.NEGATIVE_TTL) from remembered
            if budget is not None and budget < Bounds.MIN_ATTEMPT:
                raise DatabaseUnavailableError(
                    f"no time left to read AWS credentials for an IAM auth token: "
                    f"{budget:.2f} s of the connect budget remained, a read needs "
                    f"{Bounds.MIN_ATTEMPT:g} s",
                    budget=budget,
                )
            try:
                aws = self._read_chain(budget)
            except LambdaDbError as exc:
                self._failures.remember(exc, at=self._clock())
                raise
            self._failures.forget()
            return aws

    def _read_chain(self, budget: float | None) -> _AwsCredentials:
        bounds = Bounds(AwsSession.CONTAINER_CONNECT_TIMEOUT, AwsSession.CONTAINER_READ_TIMEOUT,
                        self.MAX_ATTEMPTS, self.DEFAULT_BUDGET)  # fmt: skip
        attempts = Attempts(bounds, budget, clock=self._clock, sleep=self._sleep)
        url = container_endpoint()
        where = f"the container credentials endpoint {url}" if url else "botocore's chain"
        last: BaseException | None = None
        for attempt in attempts:
            try:
                frozen = self._aws.credentials(attempts.remaining)
            except aws_errors() as exc:
                if not is_transient(exc):
                    raise ConfigurationError(
                        f"cannot read AWS credentials to sign an IAM auth token from "
                        f"{where}: {failure_reason(exc)}",
                        variable="AWS_ACCESS_KEY_ID",
                    ) from exc
                last = exc
                logger.info(
                    "attempt %d to read AWS credentials from %s failed after %.2f s (%s)",
                    attempt, where, attempts.elapsed(), failure_reason(exc),
                )  # fmt: skip
                continue
            if frozen is None or not frozen.access_key or not frozen.secret_key:
                raise ConfigurationError(
                    "IAM database authentication found no AWS credentials in botocore's "
                    "chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, container or instance "
                    "role); Lambda provides them from the function's role",
                    variable="AWS_ACCESS_KEY_ID",
                )
            return _AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)
        raise DatabaseUnavailableError(
            f"could not read AWS credentials to sign an IAM auth token: {where} failed "
            f"({failure_reason(last)}) on each of {attempts.summary()}; retry later, and "
            f"check the function's role",
            budget=attempts.budget,
        ) from last
