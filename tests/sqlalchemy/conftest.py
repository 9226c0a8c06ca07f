"""Fixtures for the SQLAlchemy integration: the environment as Lambda gives it, an ``items``
table, and an ORM model of it.

Everything runs on the suite's real server (``app_db``); nothing mocks psycopg2 or
SQLAlchemy.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator

import pytest
from sqlalchemy import Integer, Text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import lambda_db
from lambda_db.sqlalchemy import create_engine
from tests.conftest import AppDb

__all__ = ["Base", "Item", "engine", "env_db"]

#: The driver matrix (``DB_DRIVER=psycopg2`` and ``psycopg``), where the psycopg 3 driver is.
_MATRIX = "tests.support.drivers"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``app_db`` runs once per driver (``tests/support/drivers.py``;
    before the psycopg 3 driver, psycopg2 only)."""
    if importlib.util.find_spec(_MATRIX) is not None:
        importlib.import_module(_MATRIX).parametrize(metafunc)


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
