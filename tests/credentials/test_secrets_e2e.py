"""Secret mode end to end: the login comes from moto's Secrets Manager, the server is real.

Rotation is simulated the way it happens: the role's password changes on the server and
in the secret (``put_secret_value``; moto's ``rotate_secret`` without a rotation function
leaves the value alone), while the function still holds the old one in its cache.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from psycopg2 import sql

import lambda_db
from lambda_db._credentials.secret import SecretProvider
from lambda_db.errors import AuthenticationError
from lambda_db_lab.localpg import LocalPostgres

from ..conftest import AppDb
from .conftest import kill_backends


def _secret(app_db: AppDb, pg: LocalPostgres, password: str) -> str:
    return json.dumps(
        {
            "username": app_db.role,
            "password": password,
            "engine": "postgres",
            "host": pg.host,
            "port": pg.port,
            "dbname": app_db.name,
        }
    )


@pytest.fixture
def secret_db(app_db: AppDb, pg: LocalPostgres, secretsmanager: Any) -> Any:
    """A Database in secret mode whose secret points at ``app_db``; yields (db, provider, arn)."""
    arn = secretsmanager.create_secret(
        Name=f"{app_db.name}/db", SecretString=_secret(app_db, pg, app_db.password)
    )["ARN"]
    settings = lambda_db.Settings.from_env(
        {
            "DB_AUTH_MODE": "secret",
            "DB_SECRET_ARN": arn,
            "DB_APPLICATION_NAME": app_db.application_name,
        }
    )
    provider = SecretProvider(settings, client=secretsmanager)
    db = lambda_db.Database(settings, provider=provider)
    try:
        yield db, provider, arn
    finally:
        db.close()


def _whoami(db: lambda_db.Database) -> str:
    with db.invocation() as scope, scope.connection.cursor() as cur:
        cur.execute("SELECT current_user")
        row = cur.fetchone()
        assert row is not None
        return str(row[0])


def _set_password(pg: LocalPostgres, app_db: AppDb, password: str) -> None:
    pg.execute(
        sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(app_db.role)), (password,)
    )


def _kill(db: lambda_db.Database, app_db: AppDb) -> None:
    kill_backends(app_db, db.get_connection())


def test_rotation_recovers_after_exactly_one_refetch(
    secret_db: Any, app_db: AppDb, pg: LocalPostgres, secretsmanager: Any
) -> None:
    db, provider, arn = secret_db
    assert _whoami(db) == app_db.role
    assert secretsmanager.get_secret_value_calls == 1

    new_password = "rotated-" + app_db.password
    _set_password(pg, app_db, new_password)
    secretsmanager.put_secret_value(SecretId=arn, SecretString=_secret(app_db, pg, new_password))
    _kill(db, app_db)

    assert _whoami(db) == app_db.role
    assert secretsmanager.get_secret_value_calls == provider.fetches == 2
    assert db.stats.auth_refreshes == 1
    assert db.stats.connects == 2


def test_a_wrong_secret_fails_after_one_refetch_not_a_loop(
    secret_db: Any, app_db: AppDb, pg: LocalPostgres, secretsmanager: Any
) -> None:
    db, _provider, arn = secret_db
    assert _whoami(db) == app_db.role
    # The server's password changes, but the secret gets a different one (a rotation that
    # failed half-way): the cached password fails, the refetched one fails, and that is all.
    _set_password(pg, app_db, "server-side-" + app_db.password)
    wrong = "not-the-password-" + app_db.password
    secretsmanager.put_secret_value(SecretId=arn, SecretString=_secret(app_db, pg, wrong))
    _kill(db, app_db)

    with pytest.raises(AuthenticationError, match="even after refreshing") as info:
        _whoami(db)
    assert secretsmanager.get_secret_value_calls == 2
    message = str(info.value)
    assert arn in message and "GetSecretValue" in message
    assert wrong not in message and app_db.password not in message
