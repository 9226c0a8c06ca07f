"""A secret rotated under load: four environments in ``secret`` mode, Secrets Manager by moto.

Rotation changes the role's password on the server and in the secret; connections
already open stay valid (PostgreSQL checks a password only at login), so the rotation
bites at the next connect. Here every session is terminated while the environments are
frozen, so each one reconnects with its cached, now wrong, password: it must refetch the
secret once, log in, and fail nothing. (IAM token expiry is proven per environment in
``tests/credentials/test_iam_e2e.py``: a local server holds one password per role, and
SigV4 tokens minted by different processes differ, so a multi-process IAM run cannot be
made real here.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from psycopg2 import sql

from lambda_db_lab.appdb import terminate_and_wait
from lambda_db_lab.environments import Environments, Plan
from lambda_db_lab.ledger import Ledger, committed_ids
from lambda_db_lab.sampler import ConnectionSampler
from tests.conftest import AppDb

ENVIRONMENTS = 4
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def write_secret(path: Path, app_db: AppDb, password: str) -> None:
    pg = app_db.pg
    secret = {"username": app_db.role, "password": password, "engine": "postgres",
              "host": pg.host, "port": pg.port, "dbname": app_db.name}  # fmt: skip
    path.write_text(json.dumps(secret))


@pytest.mark.slow
def test_secret_rotated_under_load(ledger_db: AppDb, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    write_secret(secret, ledger_db, ledger_db.password)
    env = {**AWS, "DB_APPLICATION_NAME": ledger_db.application_name}
    plan = Plan(env=env, invocations=20, freeze_after=10, secret_file=str(secret))
    with (
        ConnectionSampler(ledger_db.pg, ledger_db.role) as sampler,
        Environments(plan, ENVIRONMENTS) as envs,
    ):
        envs.wait_frozen()
        rotated = "rotated-" + ledger_db.password
        ledger_db.pg.execute(
            sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(ledger_db.role)),
            (rotated,),
        )
        write_secret(secret, ledger_db, rotated)
        assert terminate_and_wait(ledger_db) == ENVIRONMENTS
        envs.thaw()  # each environment's Secrets Manager now holds the new password
        envs.finish()

    assert envs.failures() == []
    assert len(envs.outcomes) == ENVIRONMENTS * 20
    for stats in envs.stats.values():
        # One refused login with the cached password, one refetch, then in.
        assert (stats["connects"], stats["auth_refreshes"]) == (2, 1), stats
    assert sampler.peak <= ENVIRONMENTS
    Ledger.check(envs.outcomes, committed_ids(ledger_db)).assert_exact()
