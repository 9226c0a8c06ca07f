"""TLS by default: no token or secret-derived password crosses a clear-text link to a remote host.

``connect_with_retry`` takes the driver; here its ``connect`` is one that fails the test if it
is ever called, so "refused" means refused before anything reached the network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import certifi
import pytest

from lambda_db._connect import connect_with_retry
from lambda_db._credentials import CredentialProvider, PasswordProvider
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db._credentials.secret import SecretProvider
from lambda_db._psycopg2 import Psycopg2Driver
from lambda_db.config import Settings
from lambda_db.errors import ConfigurationError

from .conftest import REGION, FrozenAwsTime

REMOTE = "app-proxy.proxy-abcdefghijkl.eu-west-1.rds.amazonaws.com"


class Reached(Exception):
    """Raised by the recording ``connect``: the attempt got as far as the network."""


class RecordingConnect:
    """A ``connect`` that records its keyword arguments and stops there."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        raise Reached


def must_not_connect(**kwargs: Any) -> Any:
    pytest.fail(f"a connection was attempted to {kwargs.get('host')} with {kwargs.get('sslmode')}")


class _Driver(Psycopg2Driver):
    """psycopg2's driver with ``connect`` replaced by the test's callable."""

    def __init__(self, connect: Any) -> None:
        super().__init__()
        self._connect = connect

    def connect(self, params: dict[str, Any], *, timeout: float) -> Any:
        return self._connect(**params)


def _connect(settings: Settings, provider: CredentialProvider, connect: Any) -> Any:
    return connect_with_retry(
        settings, provider, _Driver(connect), deadline=time.monotonic() + 5, sleep=lambda _: None
    )


def _iam(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": REMOTE,
        "dbname": "app",
        "user": "app_user",
        "auth_mode": "iam",
        "region": REGION,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer"])
def test_iam_over_a_weak_sslmode_to_a_remote_host_is_refused(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, sslmode: str
) -> None:
    settings = _iam(sslmode=sslmode)
    provider = IamTokenProvider(settings)
    with pytest.raises(ConfigurationError) as info:
        _connect(settings, provider, must_not_connect)
    message = str(info.value)
    assert info.value.variable == "DB_SSLMODE"
    assert f"refusing to send iam credentials to {REMOTE}" in message
    assert "DB_ALLOW_INSECURE_TRANSPORT=true" in message
    assert "X-Amz" not in message


def test_secret_over_sslmode_disable_to_a_remote_host_is_refused(secretsmanager: Any) -> None:
    value = {
        "username": "app_user",
        "password": "pw-never-sent",
        "host": REMOTE,
        "port": 5432,
        "dbname": "app",
    }
    arn = secretsmanager.create_secret(Name="app/db", SecretString=json.dumps(value))["ARN"]
    settings = Settings(auth_mode="secret", secret_arn=arn, sslmode="disable")
    provider = SecretProvider(settings, client=secretsmanager)
    with pytest.raises(ConfigurationError, match="refusing to send secret credentials") as info:
        _connect(settings, provider, must_not_connect)
    assert "pw-never-sent" not in str(info.value)
    # The host comes from the secret, so the secret was read; nothing went to the database.
    assert provider.fetches == 1


def test_the_opt_out_variable_allows_it(aws_env: dict[str, str], aws_time: FrozenAwsTime) -> None:
    settings = Settings.from_env(
        {
            "DB_HOST": REMOTE,
            "DB_NAME": "app",
            "DB_USER": "app_user",
            "DB_AUTH_MODE": "iam",
            "DB_REGION": REGION,
            "DB_SSLMODE": "disable",
            "DB_ALLOW_INSECURE_TRANSPORT": "true",
        }
    )
    connect = RecordingConnect()
    with pytest.raises(Reached):
        _connect(settings, IamTokenProvider(settings), connect)
    assert connect.calls[0]["sslmode"] == "disable"


def test_remote_hosts_default_to_verify_full_with_certifi(
    aws_env: dict[str, str], aws_time: FrozenAwsTime
) -> None:
    connect = RecordingConnect()
    with pytest.raises(Reached):
        _connect(_iam(), IamTokenProvider(_iam()), connect)
    kwargs = connect.calls[0]
    assert kwargs["sslmode"] == "verify-full"
    assert kwargs["sslrootcert"] == certifi.where()
    assert "X-Amz-Signature=" in kwargs["password"]  # the token travels only here
    assert all("X-Amz" not in str(v) for k, v in kwargs.items() if k != "password")


def test_db_sslrootcert_replaces_certifi(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, tmp_path: Path
) -> None:
    bundle = tmp_path / "global-bundle.pem"  # the RDS CA bundle, for an instance endpoint
    settings = _iam(sslrootcert=str(bundle))
    connect = RecordingConnect()
    with pytest.raises(Reached):
        _connect(settings, IamTokenProvider(settings), connect)
    assert connect.calls[0]["sslrootcert"] == str(bundle)


def test_require_is_enough_for_a_remote_host(
    aws_env: dict[str, str], aws_time: FrozenAwsTime
) -> None:
    connect = RecordingConnect()
    with pytest.raises(Reached):
        _connect(_iam(sslmode="require"), IamTokenProvider(_iam(sslmode="require")), connect)
    assert connect.calls[0]["sslmode"] == "require"


def test_password_mode_is_not_refused(aws_env: dict[str, str]) -> None:
    """``sam local invoke`` against a database container: plain password, no TLS, allowed."""
    settings = Settings(
        host="postgres", dbname="app", user="app", password="local", sslmode="disable"
    )
    connect = RecordingConnect()
    with pytest.raises(Reached):
        _connect(settings, PasswordProvider(settings), connect)
    assert connect.calls[0]["sslmode"] == "disable"


def test_certifi_holds_the_amazon_trust_services_roots() -> None:
    """RDS Proxy presents certificates chaining to Amazon Root CA 1-4 (ACM)."""
    bundle = Path(certifi.where()).read_text()
    for root in ("Amazon Root CA 1", "Amazon Root CA 2", "Amazon Root CA 3", "Amazon Root CA 4"):
        assert f"CN={root} O=Amazon" in bundle, root
