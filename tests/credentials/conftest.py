"""Fixtures for the credential tests: fixed AWS credentials, frozen clocks, moto's Secrets
Manager (in process, or as a real HTTP server behind a relay that can go silent), and a
container credentials endpoint.

Nothing here mocks psycopg2 or the server: the end-to-end tests use the suite's real
PostgreSQL (``pg``/``app_db``). AWS is faked only where it must be: moto serves Secrets
Manager, and the IAM token is signed locally with fixed credentials at a frozen time.
The silent endpoints are real listening sockets that accept and never answer
(:class:`~lambda_db_lab.relay.Relay` silenced): botocore connects, sends its request and
waits, as it would for a Secrets Manager endpoint behind a broken NAT.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lambda_db._credentials.iam import IamTokenProvider
from lambda_db._credentials.secret import SecretProvider
from lambda_db_lab.relay import Relay

#: Fixed AWS credentials (the documentation's example key) and region.
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#: Lambda's session tokens are about a kilobyte of base64; so is this one.
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJH" + "MEUCIQ+/EXAMPLE=" * 60
REGION = "eu-west-1"


class FrozenAwsTime:
    """The wall-clock time botocore signs with, frozen and movable.

    botocore reads it through ``get_current_datetime`` (``botocore.compat``), imported by
    name into ``botocore.auth`` and, when awscrt is installed, ``botocore.crt.auth``.
    Only those names are patched: psycopg2, the server and the test runner keep real time.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: datetime.datetime) -> None:
        self.now = start
        import botocore.auth

        monkeypatch.setattr(botocore.auth, "get_current_datetime", self._current)
        try:
            import botocore.crt.auth as crt_auth
        except ImportError:  # pragma: no cover - awscrt absent
            return
        monkeypatch.setattr(crt_auth, "get_current_datetime", self._current)

    def _current(self, remove_tzinfo: bool = True) -> datetime.datetime:
        utc = self.now.replace(tzinfo=datetime.UTC)
        return utc.replace(tzinfo=None) if remove_tzinfo else utc

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> dict[str, str]:
    """Fixed credentials in the environment; no config files, no instance metadata."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name in (
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def aws_time(monkeypatch: pytest.MonkeyPatch) -> FrozenAwsTime:
    """botocore's signing time, frozen at 2024-05-01 12:00:00 UTC."""
    return FrozenAwsTime(monkeypatch, datetime.datetime(2024, 5, 1, 12, 0, 0))


@pytest.fixture
def secretsmanager(aws_env: dict[str, str]) -> Iterator[Any]:
    """moto's Secrets Manager, and a boto3 client that counts ``GetSecretValue`` calls.

    ``client.get_secret_value_calls`` is counted by a botocore event hook, independently
    of the provider's own counter.
    """
    import boto3
    from moto import mock_aws

    with mock_aws():
        client: Any = boto3.client("secretsmanager", region_name=REGION)
        client.get_secret_value_calls = 0

        def count(**_: Any) -> None:
            client.get_secret_value_calls += 1

        client.meta.events.register("before-call.secrets-manager.GetSecretValue", count)
        yield client


def kill_backends(app_db: Any, *conns: Any, timeout: float = 5.0) -> None:
    """``pg_terminate_backend`` the role's sessions and wait until clients can see it.

    The termination is asynchronous: wait until the backends are gone and each given
    connection's socket is readable (the FATAL or EOF has arrived), so the next health
    check sees a dead connection rather than racing the server.
    """
    import select
    import time

    app_db.terminate_all()
    deadline = time.monotonic() + timeout
    while app_db.backends() and time.monotonic() < deadline:
        time.sleep(0.01)
    for conn in conns:
        select.select([conn.fileno()], [], [], max(0.0, deadline - time.monotonic()))


#: How long a failed fetch is remembered in the tests that wait for it to be forgotten.
SHORT_NEGATIVE_TTL = 1.0


@pytest.fixture
def short_negative_ttl(monkeypatch: pytest.MonkeyPatch) -> float:
    """Both AWS providers remember a failure for ``SHORT_NEGATIVE_TTL`` seconds only."""
    monkeypatch.setattr(SecretProvider, "NEGATIVE_TTL", SHORT_NEGATIVE_TTL)
    monkeypatch.setattr(IamTokenProvider, "NEGATIVE_TTL", SHORT_NEGATIVE_TTL)
    return SHORT_NEGATIVE_TTL


class RelayedEndpoint:
    """An HTTP endpoint reached through a relay that can go silent.

    ``url`` is what botocore is pointed at; :meth:`silence` makes the relay accept
    connections and never answer, :meth:`heal` lets traffic flow again.
    """

    relay: Relay
    url: str

    @property
    def accepted(self) -> int:
        """Connections botocore opened to the endpoint (each attempt opens one)."""
        return self.relay.accepted

    def silence(self) -> None:
        self.relay.silence()

    def heal(self) -> None:
        self.relay.heal()


class SecretsManagerServer(RelayedEndpoint):
    """moto's Secrets Manager as a real HTTP server, reached through a relay.

    ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` points botocore at the relay (``url``).
    ``admin`` is a boto3 client that talks to moto directly, to create and change
    secrets whatever the relay does.
    """

    def __init__(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.relay = Relay(host, port)
        self.url = f"http://127.0.0.1:{self.relay.port}"
        self.admin: Any = boto3.client(
            "secretsmanager",
            region_name=REGION,
            endpoint_url=f"http://{host}:{port}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create(self, name: str, value: dict[str, Any]) -> str:
        """Store ``value`` (JSON) as secret ``name``; its ARN."""
        return str(self.admin.create_secret(Name=name, SecretString=json.dumps(value))["ARN"])

    def close(self) -> None:
        self.relay.close()
        self._server.stop()


@pytest.fixture
def sm_server(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretsManagerServer]:
    """moto's Secrets Manager over HTTP, behind a relay; botocore is pointed at the relay."""
    server = SecretsManagerServer()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", server.url)
    try:
        yield server
    finally:
        server.close()


#: What the container credentials endpoint hands out (not the environment's keys).
CONTAINER_ACCESS_KEY = "ASIACONTAINEREXAMPLE"
CONTAINER_SECRET_KEY = "container/Secret+Key/forTheTestsEXAMPLE"
CONTAINER_SESSION_TOKEN = "IQoJcontainer" + "Q29udGFpbmVyVG9rZW4=" * 40
CONTAINER_AUTHORIZATION = "container-authorization-token-EXAMPLE"


class ContainerCredentials(RelayedEndpoint):
    """A real HTTP server answering as Lambda's container credentials endpoint does
    (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` under SnapStart), behind a relay.

    It checks the ``Authorization`` header against ``AWS_CONTAINER_AUTHORIZATION_TOKEN``
    and answers the JSON botocore's ``ContainerProvider`` reads, valid for six hours.
    ``requests`` counts the requests that reached it.
    """

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if self.headers.get("Authorization") != CONTAINER_AUTHORIZATION:
                    self.send_response(401)
                    self.end_headers()
                    return
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
                body = json.dumps(
                    {
                        "AccessKeyId": CONTAINER_ACCESS_KEY,
                        "SecretAccessKey": CONTAINER_SECRET_KEY,
                        "Token": CONTAINER_SESSION_TOKEN,
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="container-creds",
                         daemon=True).start()  # fmt: skip
        self.relay = Relay("127.0.0.1", self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.relay.port}/2021-04-23/credentials"

    def close(self) -> None:
        self.relay.close()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def container_credentials(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContainerCredentials]:
    """The environment of a SnapStart function: no keys, a container credentials URL."""
    server = ContainerCredentials()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", server.url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_AUTHORIZATION)
    try:
        yield server
    finally:
        server.close()
