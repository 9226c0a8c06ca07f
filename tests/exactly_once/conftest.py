"""Fixtures for the exactly-once proof: an ``orders`` table beside the idempotency table,
created as the application role (the database's owner), and a Database on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import lambda_db
from lambda_db import Database
from lambda_db.idempotency import ensure_schema
from tests.conftest import AppDb

ORDERS = """
CREATE TABLE orders (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL,
    note     text NOT NULL DEFAULT ''
)
"""


@pytest.fixture
def orders_db(app_db: AppDb) -> AppDb:
    """``app_db`` with an ``orders`` table and the idempotency table (``ensure_schema``)."""
    conn = app_db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(ORDERS)
            ensure_schema(conn)
    finally:
        conn.close()
    return app_db


@pytest.fixture
def db(orders_db: AppDb) -> Iterator[Database]:
    """A Database on ``orders_db`` (the application's view), closed afterwards."""
    database = Database(orders_db.settings)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    lambda_db.idempotency.stats.reset()


def insert_order(conn: Any, order_id: str, note: str = "") -> int:
    """Insert an order on ``conn`` (in its transaction); its id."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO orders (order_id, note) VALUES (%s, %s) RETURNING id", (order_id, note)
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def order_count(app_db: AppDb) -> int:
    """Rows in ``orders``."""
    count: int = app_db.query("SELECT count(*) FROM orders")[0][0]
    return count


def records(app_db: AppDb) -> list[tuple[str, str | None]]:
    """(key, result) of every idempotency record, by key."""
    return [
        (str(key), result)
        for key, result in app_db.query(
            "SELECT key, result FROM lambda_db_idempotency ORDER BY key"
        )
    ]
