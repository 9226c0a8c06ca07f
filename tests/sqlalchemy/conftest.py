"""Fixtures for the SQLAlchemy integration: the environment as Lambda gives it, an ``items``
table, and an ORM model of it.

Everything runs on the suite's real server (``app_db``); nothing mocks psycopg2 or
SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Integer, Text, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import lambda_db
from lambda_db.sqlalchemy import create_engine, with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support import drivers

__all__ = ["Base", "Item", "engine", "env_db", "ids", "raw_insert", "warm"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``app_db`` runs once per driver (``tests/support/drivers.py``)."""
    drivers.parametrize(metafunc)


class Base(DeclarativeBase):
    """The tests' declarative base."""


class Item(Base):
    """A row of the tests' ``items`` table."""

    __tablename__ = "items"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)


@pytest.fixture
def env_db(app_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> AppDb:
    """``app_db`` exported as the process environment, with the ``items`` table."""
    for key, value in app_db.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PGOPTIONS", raising=False)
    app_db.query(
        f"CREATE TABLE items (id text PRIMARY KEY, n int NOT NULL DEFAULT 0); "
        f'GRANT ALL ON items TO "{app_db.role}"'
    )
    return app_db


@pytest.fixture
def engine(env_db: AppDb) -> Iterator[Engine]:
    """An engine on the default database (the environment's), disposed afterwards."""
    engine = create_engine()
    try:
        yield engine
    finally:
        engine.dispose()
        lambda_db.reset()


@pytest.fixture
def warm(engine: Engine, env_db: AppDb) -> Engine:
    """``engine`` after one invocation: the dialect's first connect is out of the way."""

    @with_session(engine)
    def first(event: Any, context: Any, session: Session) -> None:
        session.execute(text("SELECT 1"))

    first({}, LambdaContext())
    return engine


def raw_insert(item_id: str) -> None:
    """Insert an item through lambda-db's connection itself (``with_connection``'s way)."""
    with lambda_db.get_connection().cursor() as cur:
        cur.execute("INSERT INTO items (id) VALUES (%s)", (item_id,))


def ids(app_db: AppDb) -> list[str]:
    """The committed items' ids, in order, read on a connection of the test's own."""
    return [item_id for (item_id,) in app_db.query("SELECT id FROM items ORDER BY id")]
