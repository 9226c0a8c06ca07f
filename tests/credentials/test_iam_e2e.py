"""IAM mode end to end on the suite's real server, over TLS with ``verify-full``.

The server cannot check a SigV4 signature, so the test plays RDS's part: the role's
password is set to exactly the token boto3 would generate for that moment, and lambda-db
must log in with a token that is byte for byte the same.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.auth
import pytest
from psycopg2 import sql

import lambda_db
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db.errors import AuthenticationError
from lambda_db_lab.localpg import LocalPostgres
from tests.conftest import FakeClock

from ..conftest import AppDb
from .conftest import REGION, FrozenAwsTime, kill_backends

HOST = "127.0.0.1"  # the test CA's certificate names localhost and 127.0.0.1


@pytest.fixture
def iam_env(app_db: AppDb, pg: LocalPostgres, aws_env: dict[str, str]) -> dict[str, str]:
    """The function's environment for IAM mode against the TLS port."""
    return {
        "DB_AUTH_MODE": "iam",
        "DB_HOST": HOST,
        "DB_PORT": str(pg.tls_port),
        "DB_NAME": app_db.name,
        "DB_USER": app_db.role,
        "DB_REGION": REGION,
        "DB_SSLMODE": "verify-full",
        "DB_SSLROOTCERT": str(pg.ca_path),
        "DB_APPLICATION_NAME": app_db.application_name,
    }


def expected_token(monkeypatch: pytest.MonkeyPatch, port: int, user: str) -> str:
    """What ``boto3.client("rds").generate_db_auth_token`` returns now (pure-Python signer)."""
    monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "v4-query", botocore.auth.SigV4QueryAuth)
    client = boto3.client("rds", region_name=REGION)
    return str(client.generate_db_auth_token(DBHostname=HOST, Port=port, DBUsername=user))


def set_role_password(app_db: AppDb, password: str) -> None:
    query = sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(app_db.role))
    app_db.pg.execute(query, (password,))


def current_user(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        return str(cur.fetchone()[0])


def test_iam_login_over_verify_full_and_token_expiry(
    app_db: AppDb,
    pg: LocalPostgres,
    iam_env: dict[str, str],
    aws_time: FrozenAwsTime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = expected_token(monkeypatch, pg.tls_port, app_db.role)
    assert len(token) > 1500  # with a session token; PostgreSQL takes it as a scram password
    set_role_password(app_db, token)

    settings = lambda_db.Settings.from_env(iam_env)
    provider = IamTokenProvider(settings, clock=clock)
    db = lambda_db.Database(settings, provider=provider)
    try:
        with db.invocation() as scope:
            conn = scope.connection
            assert current_user(conn) == app_db.role
            first = conn
        assert provider.minted == 1
        assert db.stats.connects == 1
        assert conn.info.ssl_in_use

        # 16 minutes later the token has expired, but the open connection is healthy:
        # it is kept, and no token is minted on the warm path.
        clock.advance(16 * 60)
        aws_time.advance(16 * 60)
        with db.invocation() as scope:
            conn = scope.connection
            assert conn is first
            assert current_user(conn) == app_db.role
        assert db.stats.connects == 1
        assert provider.minted == 1

        # The connection dies; the next connect needs (and mints) a new token.
        new_token = expected_token(monkeypatch, pg.tls_port, app_db.role)
        assert new_token != token
        set_role_password(app_db, new_token)
        kill_backends(app_db, first)
        with db.invocation() as scope:
            conn = scope.connection
            assert conn is not first
            assert current_user(conn) == app_db.role
        assert db.stats.connects == 2
        assert provider.minted == 2
        assert db.stats.auth_refreshes == 0
    finally:
        db.close()


def test_refused_token_is_replaced_once(
    app_db: AppDb,
    pg: LocalPostgres,
    iam_env: dict[str, str],
    aws_time: FrozenAwsTime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = lambda_db.Settings.from_env(iam_env)
    provider = IamTokenProvider(settings, clock=clock)
    stale = provider.get().password  # cached, still "valid" by our clock
    aws_time.advance(5)
    set_role_password(app_db, expected_token(monkeypatch, pg.tls_port, app_db.role))

    db = lambda_db.Database(settings, provider=provider)
    try:
        with db.invocation() as scope:
            conn = scope.connection
            assert current_user(conn) == app_db.role
        assert provider.minted == 2
        assert db.stats.auth_refreshes == 1
        assert provider.get().password != stale
    finally:
        db.close()


def test_a_token_the_server_never_accepts_fails_after_one_refresh(
    app_db: AppDb, iam_env: dict[str, str], aws_time: FrozenAwsTime, clock: FakeClock
) -> None:
    settings = lambda_db.Settings.from_env(iam_env)
    provider = IamTokenProvider(settings, clock=clock)
    db = lambda_db.Database(settings, provider=provider)
    with pytest.raises(AuthenticationError, match="even after refreshing") as info:
        db.get_connection()
    assert provider.minted == 2
    message = str(info.value)
    assert "rds-db:connect" in message
    assert "X-Amz" not in message
