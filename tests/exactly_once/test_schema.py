"""``ensure_schema`` and ``delete_expired``: the idempotency table, made safely, kept small."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from lambda_db import ConfigurationError, Database, idempotent, with_connection
from lambda_db.idempotency import DEFAULT_TABLE, delete_expired, ensure_schema
from lambda_db.idempotency._store import Store
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb


def tables(app_db: AppDb) -> list[tuple[str, str]]:
    return [
        (str(schema), str(name))
        for schema, name in app_db.query(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE tablename LIKE '%idempotency%' ORDER BY 1, 2"
        )
    ]


def test_eight_concurrent_callers_all_succeed(app_db: AppDb) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def create() -> None:
        conn = app_db.connect()
        try:
            barrier.wait(10)
            with conn:
                ensure_schema(conn)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert tables(app_db) == [("public", DEFAULT_TABLE)]
    indexes = app_db.query(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1", (DEFAULT_TABLE,)
    )
    index = Store(DEFAULT_TABLE).index.strip('"')
    assert indexes == [(index,), (f"{DEFAULT_TABLE}_pkey",)]


def test_it_is_idempotent_and_works_in_autocommit(app_db: AppDb) -> None:
    conn = app_db.connect()
    try:
        conn.autocommit = True
        ensure_schema(conn)  # its own transaction
        ensure_schema(conn)
        assert conn.autocommit is True
        assert conn.get_transaction_status() == 0  # idle: committed, nothing left open
    finally:
        conn.close()
    assert tables(app_db) == [("public", DEFAULT_TABLE)]


def test_a_failure_rolls_back_in_autocommit(app_db: AppDb) -> None:
    conn = app_db.connect()
    try:
        conn.autocommit = True
        with pytest.raises(Exception, match="nowhere"):
            ensure_schema(conn, table="nowhere.idempotency")  # no such schema
        assert conn.get_transaction_status() == 0
    finally:
        conn.close()


def test_a_configured_table_name_schema_qualified(app_db: AppDb) -> None:
    app_db.query(f'CREATE SCHEMA ops AUTHORIZATION "{app_db.role}"')
    conn = app_db.connect()
    with conn:
        ensure_schema(conn, table="ops.request_keys_idempotency")
    conn.close()
    assert tables(app_db) == [("ops", "request_keys_idempotency")]
    db = Database(app_db.settings)

    @with_connection(database=db)
    @idempotent("id", table="ops.request_keys_idempotency", database=db)
    def handler(event: dict[str, Any], context: Any) -> int:
        return 7

    assert handler({"id": 1}, LambdaContext()) == handler({"id": 1}, LambdaContext()) == 7
    assert app_db.query("SELECT count(*) FROM ops.request_keys_idempotency") == [(1,)]
    db.close()


@pytest.mark.parametrize("table", ["", "a.b.c", "1table", "x" * 64, "items; DROP", 'a"b'])
def test_bad_table_names_are_refused(app_db: AppDb, table: str) -> None:
    conn = app_db.connect()
    try:
        with pytest.raises(ConfigurationError) as info:
            ensure_schema(conn, table=table)
        assert info.value.variable == "table"
    finally:
        conn.close()


def test_delete_expired_deletes_at_most_its_limit_oldest_first(orders_db: AppDb) -> None:
    orders_db.query(
        "INSERT INTO lambda_db_idempotency (key, expires_at)"
        " SELECT 'old-' || n, now() - n * interval '1 minute' FROM generate_series(1, 25) n;"
        "INSERT INTO lambda_db_idempotency (key, expires_at)"
        " VALUES ('live', now() + interval '1 hour')"
    )
    conn = orders_db.connect()
    try:
        with conn:
            assert delete_expired(conn, limit=10) == 10
        left = [k for (k,) in orders_db.query("SELECT key FROM lambda_db_idempotency")]
        assert len(left) == 16 and "old-25" not in left and "old-1" in left  # oldest went
        with conn:
            assert delete_expired(conn) == 15
        assert orders_db.query("SELECT key FROM lambda_db_idempotency") == [("live",)]
    finally:
        conn.close()
