"""What the two AWS modes share on botocore's side: one session per provider with a bounded
container credentials read, and clients per pair of timeouts.

Reading a secret (``secret`` mode) and reading AWS credentials from the container
credentials endpoint (Lambda SnapStart, both modes) are network calls made while an
invocation waits to connect. botocore's own bounds outlive any Lambda deadline (60 s
connect and read timeouts, retries with sleeps between them; its container fetcher makes
3 attempts of up to 2 s each and sleeps 1 s after every failure, the last one included).
So every call made here is a single attempt with timeouts given by the caller, who makes
the attempts within its budget (``lambda_db._credentials._budget``):

* :class:`AwsSession` holds one botocore session per provider: AWS credentials from
  botocore's chain, but with a container provider whose one request per call uses our
  timeouts; and clients per pair of timeouts, with botocore's retries off (a client from
  a loaded session costs about 1 ms; a new ``boto3.Session`` per client about 35 ms,
  measured);
* :func:`container_endpoint` names the URL that container provider calls, for messages.

What else the two modes share has a module of its own: which failures an attempt catches,
which of them waiting may cure, and how to tell them (``_aws_errors.py``); botocore's
DEBUG lines about signatures and response bodies kept out of the logs (``_quiet.py``).

botocore is imported inside functions only: ``import lambda_db`` loads no AWS library.

Example::

    aws = AwsSession()
    frozen = aws.credentials(attempts.remaining)     # within what is left
    client = aws.client("secretsmanager", "eu-west-1", bounds.timeouts(attempts.remaining()))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from lambda_db._credentials._budget import Bounds
from lambda_db._credentials._quiet import SENSITIVE_LOGGERS, muted_loggers

__all__ = ["AwsSession", "container_endpoint"]

logger = logging.getLogger(__name__)

_FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
_RELATIVE_URI = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
_CONTAINER_HOST = "http://169.254.170.2"


def container_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The container credentials URL botocore would call, without user info or query.

    >>> container_endpoint({_FULL_URI: "http://127.0.0.1:9001/2021-04-23/credentials?a=b"})
    'http://127.0.0.1:9001/2021-04-23/credentials'
    >>> container_endpoint({_RELATIVE_URI: "/v2/credentials/0f1e"})
    'http://169.254.170.2/v2/credentials/0f1e'
    >>> container_endpoint({}) is None
    True
    """
    env = os.environ if environ is None else environ
    url = _CONTAINER_HOST + env[_RELATIVE_URI] if _RELATIVE_URI in env else env.get(_FULL_URI)
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _BoundedHttp:
    """What botocore's container fetcher sends through: botocore's own HTTP session,
    rebuilt when :attr:`timeouts` (``(connect, read)``) change."""

    def __init__(self) -> None:
        self.timeouts = (1.0, 2.0)
        self._session: Any = None
        self._key: tuple[float, float] | None = None

    def send(self, request: Any) -> Any:
        if self._key != self.timeouts:
            from botocore.httpsession import URLLib3Session

            session_class: Any = URLLib3Session
            if self._session is not None:
                self._session.close()
            self._session, self._key = session_class(timeout=self.timeouts), self.timeouts
        return self._session.send(request)


def _no_sleep(seconds: float) -> None:
    return None


def _bounded_container_provider(http: _BoundedHttp) -> Any:
    """botocore's container credentials provider, making one request per call through
    ``http`` (the caller's :class:`Attempts` retries, within its budget)."""
    from botocore.credentials import ContainerProvider
    from botocore.utils import ContainerMetadataFetcher

    class Fetcher(ContainerMetadataFetcher):
        RETRY_ATTEMPTS = 1
        SLEEP_TIME = 0

    class Provider(ContainerProvider):
        METHOD = "container-role-bounded"

    http_session: Any = http
    fetcher: Any = Fetcher(session=http_session, sleep=_no_sleep)
    return Provider(fetcher=fetcher)


class AwsSession:
    """One botocore session for one provider: AWS credentials read within bounds, and
    clients per pair of timeouts.

    Credentials come from botocore's chain in botocore's order, with one change: the
    container provider (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` or ``_RELATIVE_URI``, what
    Lambda SnapStart uses) makes one request per call with timeouts cut to fit the time
    given to :meth:`credentials` (at most :attr:`CONTAINER_CONNECT_TIMEOUT` and
    :attr:`CONTAINER_READ_TIMEOUT`). Environment keys (ordinary Lambda) are read without
    building a session at all.

    Example::

        aws = AwsSession()
        frozen = aws.credentials(attempts.remaining)   # access_key, secret_key, token
        client = aws.client("secretsmanager", "eu-west-1", (0.7, 1.3))
    """

    #: Seconds to connect to the container credentials endpoint (a local address).
    CONTAINER_CONNECT_TIMEOUT = 1.0
    #: Seconds to wait for its answer (botocore's default is 2 s).
    CONTAINER_READ_TIMEOUT = 2.0
    #: Clients kept (one per pair of timeouts; the oldest goes first).
    MAX_CLIENTS = 4

    def __init__(self) -> None:
        self._session: Any = None
        self._http = _BoundedHttp()
        self._clients: dict[tuple[str, str | None, tuple[float, float]], Any] = {}

    @staticmethod
    def environment_credentials() -> Any:
        """Frozen credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or None.

        The chain's first link on its own: with keys in the environment (ordinary Lambda)
        the whole chain returns exactly these, and skipping the session skips importing
        ``botocore.session`` and ``botocore.client`` (about 30 ms of cold start).
        """
        import botocore.credentials

        resolved = botocore.credentials.EnvProvider().load()
        return resolved.get_frozen_credentials() if resolved is not None else None

    def credentials(self, remaining: Callable[[], float]) -> Any:
        """Frozen credentials from botocore's chain, or None when the chain has none.

        ``remaining()`` says how many seconds are left (:meth:`Attempts.remaining`): a
        container request gets timeouts that fit in them.
        """
        frozen = self.environment_credentials()
        if frozen is not None:
            return frozen
        session = self.session()  # a cold start imports botocore.session: count it
        left = remaining()
        bounds = Bounds(self.CONTAINER_CONNECT_TIMEOUT, self.CONTAINER_READ_TIMEOUT, 1, left)
        self._http.timeouts = bounds.timeouts(left)
        with muted_loggers(*SENSITIVE_LOGGERS):
            # A refresh (botocore's advisory and mandatory windows before expiry) happens
            # in get_frozen_credentials(), through the same bounded fetcher.
            resolved = session.get_credentials()
            return resolved.get_frozen_credentials() if resolved is not None else None

    def client(self, service: str, region: str | None, timeouts: tuple[float, float]) -> Any:
        """A ``service`` client with these ``(connect, read)`` timeouts and no retries."""
        key = (service, region, timeouts)
        client = self._clients.get(key)
        if client is None:
            from botocore.config import Config

            connect, read = timeouts
            config = Config(
                connect_timeout=connect,
                read_timeout=read,
                retries={"mode": "standard", "total_max_attempts": 1},
            )
            client = self.session().create_client(service, region_name=region, config=config)
            while len(self._clients) >= self.MAX_CLIENTS:
                self._clients.pop(next(iter(self._clients)))
            self._clients[key] = client
        return client

    def session(self) -> Any:
        """The botocore session (created at first use), its container provider bounded."""
        if self._session is None:
            import botocore.session

            session = botocore.session.get_session()
            resolver = session.get_component("credential_provider")
            resolver.insert_before("container-role", _bounded_container_provider(self._http))
            resolver.remove("container-role")
            self._session = session
        return self._session
