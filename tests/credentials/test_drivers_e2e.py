"""The three auth modes and TLS, end to end, for each driver: the same libpq parameters
(``lambda_db._connect.connect_kwargs``) reach psycopg2 and psycopg 3 alike, and their
failures are classified alike (a rotated secret or a refused token is refreshed once, a
certificate that does not verify is a configuration error, never retried).

The modes' own behaviour is in ``test_secrets_e2e.py`` and ``test_iam_e2e.py`` (psycopg2);
here each case runs once per driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

import lambda_db
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db._credentials.secret import SecretProvider
from lambda_db_lab.localpg import LocalPostgres
from tests.conftest import FakeClock
from tests.support.drivers import DRIVERS, Kit

from ..conftest import AppDb
from .conftest import FrozenAwsTime, kill_backends
from .test_iam_e2e import HOST, current_user, expected_token, iam_env, set_role_password
from .test_secrets_e2e import _secret, _set_password

__all__ = ["iam_env"]  # a fixture, imported to be used here

pytestmark = pytest.mark.parametrize("db_driver", DRIVERS)


def test_password_over_verify_full(app_db: AppDb, pg: LocalPostgres, dbapi: Kit) -> None:
    settings = app_db.settings.replace(host=HOST, port=pg.tls_port, sslmode="verify-full",
                                       sslrootcert=str(pg.ca_path))  # fmt: skip
    db = lambda_db.Database(settings)
    with db.invocation() as scope:
        conn = scope.connection
        assert type(conn).__module__.split(".")[0] == dbapi.module.__name__
        assert current_user(conn) == app_db.role
        assert dbapi.ssl_in_use(conn)
    db.close()


def test_a_certificate_that_does_not_verify_is_not_retried(
    app_db: AppDb, pg: LocalPostgres, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    settings = app_db.settings.replace(host=HOST, port=pg.tls_port, sslmode="verify-full",
                                       sslrootcert=str(other_ca))  # fmt: skip
    sleeps: list[float] = []
    db = lambda_db.Database(settings, sleep=sleeps.append)
    with pytest.raises(lambda_db.ConfigurationError, match="certificate verify failed") as info:
        db.get_connection()
    assert info.value.variable == "DB_SSLMODE"
    assert sleeps == []


def test_secret_mode_rotation_recovers_after_one_refetch(
    app_db: AppDb, pg: LocalPostgres, secretsmanager: Any, db_driver: str
) -> None:
    arn = secretsmanager.create_secret(
        Name=f"{app_db.name}/db", SecretString=_secret(app_db, pg, app_db.password)
    )["ARN"]
    settings = lambda_db.Settings.from_env(
        {"DB_AUTH_MODE": "secret", "DB_SECRET_ARN": arn, "DB_DRIVER": db_driver}
    )
    provider = SecretProvider(settings, client=secretsmanager)
    db = lambda_db.Database(settings, provider=provider)
    with db.invocation() as scope:
        assert current_user(scope.connection) == app_db.role

    new_password = "rotated-" + app_db.password
    _set_password(pg, app_db, new_password)
    secretsmanager.put_secret_value(SecretId=arn, SecretString=_secret(app_db, pg, new_password))
    kill_backends(app_db, db.get_connection())
    with db.invocation() as scope:
        assert current_user(scope.connection) == app_db.role
    assert provider.fetches == 2
    assert (db.stats.auth_refreshes, db.stats.connects) == (1, 2)
    db.close()


def test_iam_mode_over_verify_full_replaces_a_refused_token_once(
    app_db: AppDb,
    pg: LocalPostgres,
    iam_env: dict[str, str],
    aws_time: FrozenAwsTime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    dbapi: Kit,
) -> None:
    settings = lambda_db.Settings.from_env({**iam_env, "DB_DRIVER": dbapi.name})
    provider = IamTokenProvider(settings, clock=clock)
    stale = provider.get().password  # cached, still "valid" by our clock
    aws_time.advance(5)
    set_role_password(app_db, expected_token(monkeypatch, pg.tls_port, app_db.role))

    db = lambda_db.Database(settings, provider=provider)
    with db.invocation() as scope:
        conn = scope.connection
        assert current_user(conn) == app_db.role
        assert dbapi.ssl_in_use(conn)
    assert provider.minted == 2
    assert db.stats.auth_refreshes == 1
    assert provider.get().password != stale
    db.close()
