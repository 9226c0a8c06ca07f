"""``sam local invoke``: the same handler, password mode, a local database, no code change.

``sam local invoke --env-vars env.json`` sets ``AWS_SAM_LOCAL=true`` and the overrides from
env.json (``DB_AUTH_MODE=password``, ``DB_HOST``, ``DB_PASSWORD`` ...). The handler below is
what a user deploys; only its environment differs.
"""

from __future__ import annotations

from typing import Any

import pytest

import lambda_db
from lambda_db.testing import LambdaContext

from ..conftest import AppDb


@lambda_db.with_connection
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A deployed handler, unchanged."""
    with lambda_db.get_connection().cursor() as cur:
        cur.execute("SELECT current_user, %s::text", (event["name"],))
        row = cur.fetchone()
    assert row is not None
    return {"statusCode": 200, "user": row[0], "name": row[1]}


def test_sam_local_runs_the_handler_in_password_mode(
    app_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = {  # what template.yaml declares for the function
        "DB_AUTH_MODE": "iam",
        "DB_HOST": "app-proxy.proxy-abcdefghijkl.eu-west-1.rds.amazonaws.com",
        "DB_USER": "app_user",
        "DB_NAME": "app",
    }
    env_json = {  # env.json overrides for `sam local invoke`
        "DB_AUTH_MODE": "password",
        "DB_HOST": app_db["DB_HOST"],
        "DB_PORT": app_db["DB_PORT"],
        "DB_NAME": app_db["DB_NAME"],
        "DB_USER": app_db["DB_USER"],
        "DB_PASSWORD": app_db["DB_PASSWORD"],
        "DB_SSLMODE": "disable",
    }
    for name, value in {**deployed, **env_json, "AWS_SAM_LOCAL": "true"}.items():
        monkeypatch.setenv(name, value)
    lambda_db.reset()

    result = handler({"name": "local"}, LambdaContext())
    assert result == {"statusCode": 200, "user": app_db.role, "name": "local"}
    db = lambda_db.default_database()
    assert db.settings.auth_mode == "password"
    assert db.provider.mode == "password"
    assert handler({"name": "again"}, LambdaContext())["name"] == "again"
    assert db.stats.connects == 1 and db.stats.commits == 2
