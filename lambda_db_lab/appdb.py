"""A database and login role on a lab server: the function's environment, and an operator's hands.

:class:`AppDb` is what a function sees (its ``DB_*`` variables) plus what an operator (or
AWS) does to the server: query it as the superuser, list and kill the role's sessions.

Example::

    with LocalPostgres() as pg:
        app_db = ledger_app_db(pg)          # a new role and database, with the ledger table
        os.environ.update(app_db)           # the function's configuration
        terminate_and_wait(app_db)          # what a failover does to its sessions
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import psycopg2

import lambda_db
from lambda_db_lab.ledger import create_table
from lambda_db_lab.localpg import LocalPostgres
from lambda_db_lab.wait import wait_for

__all__ = ["AppDb", "ledger_app_db", "terminate_and_wait"]


class AppDb(dict[str, str]):
    """A fresh database and login role; the mapping is the function's environment.

    ``AppDb`` is a ``dict`` of ``DB_*`` variables (password mode, no TLS), with helpers
    to inspect the server the way an operator would.
    """

    def __init__(self, pg: LocalPostgres, name: str, password: str) -> None:
        super().__init__(
            DB_HOST=pg.host,
            DB_PORT=str(pg.port),
            DB_NAME=name,
            DB_USER=name,
            DB_PASSWORD=password,
            DB_AUTH_MODE="password",
            DB_APPLICATION_NAME=f"test-{name}",
        )
        self.pg = pg
        self.name = name
        self.role = name
        self.password = password
        self.application_name = f"test-{name}"

    def __repr__(self) -> str:  # not the dict's: it holds the password
        return f"<AppDb {self.name} on {self.pg.host}:{self.pg.port}>"

    @property
    def settings(self) -> lambda_db.Settings:
        """Settings for this database (password mode)."""
        return lambda_db.Settings.from_env(self)

    def admin(self) -> Any:
        """A superuser autocommit connection to this database."""
        return self.pg.admin(self.name)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` as the superuser in this database and return all rows."""
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def backends(self, state: str | None = None) -> list[tuple[int, str]]:
        """(pid, state) of this role's sessions, optionally only those in ``state``."""
        rows = self.query(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity"
            " WHERE usename = %s AND pid <> pg_backend_pid()",
            (self.role,),
        )
        return [(pid, st) for pid, st in rows if state is None or st == state]

    def terminate_all(self, *, wait: float = 5.0) -> int:
        """``pg_terminate_backend`` every session of this role; returns how many.

        Termination is asynchronous: this waits until the backends have exited (so
        their FATAL has reached the clients' sockets), as a frozen Lambda would have.
        """
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (self.role,),
        )
        deadline = time.monotonic() + wait
        while self.backends() and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(rows)

    def connect(self, **extra: Any) -> Any:
        """A plain psycopg2 connection as this role (not through lambda-db)."""
        return psycopg2.connect(
            **self.pg.connect_kwargs(
                user=self.role, password=self.password, dbname=self.name, **extra
            )
        )


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
