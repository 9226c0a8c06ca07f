"""Acting on the server as an operator (or as AWS) would: new databases, killed sessions."""

from __future__ import annotations

import secrets

from lambda_db_lab.localpg import LocalPostgres
from tests.conftest import AppDb
from tests.support.ledger import create_table
from tests.support.wait import wait_for

__all__ = ["ledger_app_db", "terminate_and_wait"]


def ledger_app_db(pg: LocalPostgres, prefix: str = "app") -> AppDb:
    """A new role and database on ``pg`` (a private server), with the ledger table."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    password = "pw-" + secrets.token_urlsafe(12)
    pg.create_role(name, password)
    pg.create_database(name, owner=name)
    db = AppDb(pg, name, password)
    create_table(db)
    return db


def terminate_and_wait(app_db: AppDb) -> int:
    """``pg_terminate_backend`` every session of the role; return once they have exited."""
    killed = app_db.terminate_all()
    wait_for(lambda: not app_db.backends(), f"{app_db.role}'s sessions to exit")
    return killed
