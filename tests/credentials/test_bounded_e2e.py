"""A dead credentials endpoint, end to end through ``@lambda_db.with_connection``.

A 3-second function (``LambdaContext(timeout=3.0)``) against the suite's real PostgreSQL:
in secret mode Secrets Manager (moto over HTTP) goes silent, in iam mode the container
credentials endpoint does (SnapStart: no keys in the environment). Each time: the first
invocation ends with a typed ``DatabaseUnavailableError`` before the function's deadline,
the next fails at once without touching the endpoint, and once the endpoint heals and the
failure is forgotten, an invocation succeeds. The secret, the token and the container's
keys appear in no log record (DEBUG, every logger), error, cause chain or repr.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any
from urllib.parse import parse_qsl

import boto3
import botocore.auth
import pytest

import lambda_db
from lambda_db.errors import DatabaseUnavailableError
from lambda_db.testing import LambdaContext
from lambda_db_lab.localpg import LocalPostgres

from ..conftest import AppDb
from .conftest import (
    CONTAINER_ACCESS_KEY,
    CONTAINER_SECRET_KEY,
    CONTAINER_SESSION_TOKEN,
    REGION,
    ContainerCredentials,
    FrozenAwsTime,
    RelayedEndpoint,
    SecretsManagerServer,
)
from .test_iam_e2e import set_role_password

#: The function's timeout.
TIMEOUT = 3.0


@lambda_db.with_connection
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A deployed handler that uses the database."""
    with lambda_db.get_connection().cursor() as cur:
        cur.execute("SELECT current_user")
        row = cur.fetchone()
    assert row is not None
    return {"statusCode": 200, "user": row[0]}


def _invoke() -> tuple[Any, float]:
    """One invocation of a 3-second function: (its result or error, seconds it took)."""
    start = time.monotonic()
    try:
        outcome: Any = handler({}, LambdaContext(timeout=TIMEOUT))
    except Exception as exc:
        outcome = exc
    return outcome, time.monotonic() - start


def _use_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lambda_db.reset()


def _dead_then_healed(
    endpoint: RelayedEndpoint, negative_ttl: float, user: str
) -> list[BaseException]:
    """The three invocations every test here makes; the errors of the first two."""
    endpoint.silence()
    first, seconds = _invoke()
    assert isinstance(first, DatabaseUnavailableError), first
    assert seconds < TIMEOUT
    assert endpoint.url in str(first)

    accepted = endpoint.accepted
    second, seconds = _invoke()
    assert isinstance(second, DatabaseUnavailableError), second
    assert seconds < 0.5
    assert "remembered" in str(second)
    assert endpoint.accepted == accepted  # not one connection to the dead endpoint

    endpoint.heal()
    time.sleep(negative_ttl)
    result, seconds = _invoke()
    assert result == {"statusCode": 200, "user": user}
    assert seconds < TIMEOUT
    return [first, second]


def _assert_nothing_leaks(
    needles: list[str], errors: list[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    # Records of this thread only: moto's server threads are AWS's side of the wire.
    mine = [r for r in caplog.records if r.thread == threading.get_ident()]
    assert any(r.name.startswith("botocore") for r in mine), "DEBUG was not captured"
    db = lambda_db.default_database()
    texts = [repr(db), repr(db.provider)]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    texts += [f"{r.getMessage()} {r.args!r}" for r in mine]
    for needle in needles:
        for text in texts:
            assert needle not in text


def test_secret_mode_a_silent_secrets_manager(
    app_db: AppDb,
    pg: LocalPostgres,
    sm_server: SecretsManagerServer,
    short_negative_ttl: float,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    arn = sm_server.create(
        f"{app_db.name}/db",
        {"username": app_db.role, "password": app_db.password, "engine": "postgres",
         "host": pg.host, "port": pg.port, "dbname": app_db.name},
    )  # fmt: skip
    _use_environment(
        monkeypatch,
        {"DB_AUTH_MODE": "secret", "DB_SECRET_ARN": arn,
         "DB_APPLICATION_NAME": app_db.application_name},
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)

    errors = _dead_then_healed(sm_server, short_negative_ttl, app_db.role)
    assert f"could not read the secret {arn}: Secrets Manager at {sm_server.url}" in str(errors[0])
    _assert_nothing_leaks([app_db.password], errors, caplog)


def _boto3_token(monkeypatch: pytest.MonkeyPatch, port: int, user: str) -> str:
    """boto3's token for the container's credentials (pure-Python signer, frozen time)."""
    monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "v4-query", botocore.auth.SigV4QueryAuth)
    client = boto3.client(
        "rds",
        region_name=REGION,
        aws_access_key_id=CONTAINER_ACCESS_KEY,
        aws_secret_access_key=CONTAINER_SECRET_KEY,
        aws_session_token=CONTAINER_SESSION_TOKEN,
    )
    return str(client.generate_db_auth_token(DBHostname="127.0.0.1", Port=port, DBUsername=user))


def test_iam_mode_a_silent_container_credentials_endpoint(
    app_db: AppDb,
    pg: LocalPostgres,
    container_credentials: ContainerCredentials,
    short_negative_ttl: float,
    aws_time: FrozenAwsTime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = _boto3_token(monkeypatch, pg.tls_port, app_db.role)
    set_role_password(app_db, token)
    _use_environment(
        monkeypatch,
        {"DB_AUTH_MODE": "iam", "DB_HOST": "127.0.0.1", "DB_PORT": str(pg.tls_port),
         "DB_NAME": app_db.name, "DB_USER": app_db.role, "DB_REGION": REGION,
         "DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": str(pg.ca_path),
         "DB_APPLICATION_NAME": app_db.application_name},
    )  # fmt: skip
    caplog.clear()  # boto3's own generate_db_auth_token logs its signature at DEBUG
    caplog.set_level(logging.DEBUG)

    errors = _dead_then_healed(container_credentials, short_negative_ttl, app_db.role)
    assert "could not read AWS credentials to sign an IAM auth token" in str(errors[0])
    signature = dict(parse_qsl(token.split("?", 1)[1]))["X-Amz-Signature"]
    needles = [token, signature, CONTAINER_SECRET_KEY, CONTAINER_SESSION_TOKEN]
    _assert_nothing_leaks(needles, errors, caplog)
