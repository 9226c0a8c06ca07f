"""IAM mode through SQLAlchemy: a new connection presents a newly minted token.

As in ``tests/credentials/test_iam_e2e.py``, the server cannot check a SigV4 signature, so
the test plays RDS's part: the role's password is set to exactly the token boto3 would
generate at that moment, over TLS with ``verify-full``. No ``do_connect`` hook, no token in
a URL: the engine's connections are lambda-db's.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

import lambda_db
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db.sqlalchemy import create_engine, with_session
from lambda_db.testing import LambdaContext
from lambda_db_lab.localpg import LocalPostgres
from tests.conftest import AppDb, FakeClock
from tests.credentials.conftest import FrozenAwsTime, aws_env, aws_time
from tests.credentials.test_iam_e2e import expected_token, iam_env, set_role_password

__all__ = ["aws_env", "aws_time", "iam_env"]  # fixtures, used by name


def test_a_new_connection_mints_a_new_token(
    app_db: AppDb,
    pg: LocalPostgres,
    iam_env: dict[str, str],
    aws_time: FrozenAwsTime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = expected_token(monkeypatch, pg.tls_port, app_db.role)
    set_role_password(app_db, token)
    settings = lambda_db.Settings.from_env(iam_env)
    provider = IamTokenProvider(settings, clock=clock)
    db = lambda_db.Database(settings, provider=provider)
    engine = create_engine(db)
    connects: list[Any] = []
    event.listen(engine, "connect", lambda dbapi, record: connects.append(dbapi))

    @with_session(engine)
    def whoami(event: Any, context: Any, session: Session) -> tuple[str, bool]:
        user = session.execute(text("SELECT current_user")).scalar_one()
        ssl = session.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
        return str(user), bool(ssl.scalar_one())

    # verify-full is in iam_env: no TLS, no connection. The server sees it only when it
    # speaks TLS itself (the embedded server has no OpenSSL: a terminator speaks it).
    tls = pg.server_ssl
    try:
        assert whoami({}, LambdaContext()) == (app_db.role, tls)
        assert provider.minted == 1

        # 16 minutes on, the first token has expired; the open connection is kept and no
        # token is minted on the warm path.
        clock.advance(16 * 60)
        aws_time.advance(16 * 60)
        assert whoami({}, LambdaContext()) == (app_db.role, tls)
        assert (provider.minted, len(connects)) == (1, 1)

        # The connection dies while frozen: the next one logs in with a new token.
        new_token = expected_token(monkeypatch, pg.tls_port, app_db.role)
        assert new_token != token
        set_role_password(app_db, new_token)
        app_db.terminate_all()
        assert whoami({}, LambdaContext()) == (app_db.role, tls)
        assert (provider.minted, len(connects), db.stats.connects) == (2, 2, 2)
        assert db.stats.auth_refreshes == 0
        for shown in (repr(engine), str(engine.url)):
            assert token not in shown and new_token not in shown
    finally:
        engine.dispose()
