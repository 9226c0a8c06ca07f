"""Shared fixtures: one throwaway PostgreSQL for the whole run, a fresh database per test.

The server is real (``lambda_db_lab.localpg``): TCP on 127.0.0.1, scram-sha-256, TLS with a
CA made for this run. Nothing here mocks psycopg2.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

import lambda_db
from lambda_db_lab.localpg import LocalPostgres

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    """The suite's PostgreSQL server (TLS available on ``pg.tls_port``)."""
    server = LocalPostgres(tls=True, settings={"max_connections": "120"})
    server.start()
    try:
        yield server
    finally:
        server.destroy()


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


@pytest.fixture
def app_db(pg: LocalPostgres) -> Iterator[AppDb]:
    """A new database owned by a new role, dropped (with its sessions) afterwards."""
    name = f"app{os.getpid()}_{next(_counter)}"
    password = "pw-" + secrets.token_urlsafe(12)
    pg.create_role(name, password)
    pg.create_database(name, owner=name)
    db = AppDb(pg, name, password)
    try:
        yield db
    finally:
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture(autouse=True)
def _reset_default_database() -> Iterator[None]:
    """Every test starts and ends without the module-level default connection."""
    lambda_db.reset()
    yield
    lambda_db.reset()


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.advance(30)``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock."""
    return FakeClock()
