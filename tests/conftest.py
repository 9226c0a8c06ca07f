"""Shared fixtures: one throwaway PostgreSQL for the whole run, a fresh database per test.

The server is real (``lambda_db_lab.localpg``): TCP on 127.0.0.1, scram-sha-256, TLS with a
CA made for this run. Nothing here mocks psycopg2.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

import pytest

import lambda_db
from lambda_db_lab.appdb import AppDb as AppDb  # re-exported: the tests import it from here
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
