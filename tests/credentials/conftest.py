"""Fixtures for the credential tests: fixed AWS credentials, frozen clocks, moto's Secrets Manager.

Nothing here mocks psycopg2 or the server: the end-to-end tests use the suite's real
PostgreSQL (``pg``/``app_db``). AWS is faked only where it must be: moto serves Secrets
Manager, and the IAM token is signed locally with fixed credentials at a frozen time.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest

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
