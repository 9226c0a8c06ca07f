"""What the exactly-once review found, each kept fixed: a record handler that swallows a
database error, a handler that ends the transaction itself, a role's default isolation
level, a result too large to store, two table names that share a prefix."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg2
import pytest

from lambda_db import Database, LambdaDbError, idempotent, with_connection
from lambda_db.idempotency import ensure_schema
from lambda_db.idempotency._decorator import MAX_RESULT_BYTES
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.exactly_once.conftest import insert_order, order_count, records
from tests.exactly_once.test_batch import batch_handler, body_of, failed, sqs_event


@pytest.mark.parametrize("swallowing", ["O-3", "O-5"])
def test_a_record_handler_that_swallows_a_database_error_fails_only_that_record(
    db: Database, orders_db: AppDb, swallowing: str
) -> None:
    def record_handler(record: dict[str, Any]) -> None:
        doc = body_of(record)
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES (%s)", (doc["order_id"],))
            if doc["order_id"] == swallowing:  # the handler "handles" it, returns normally
                with contextlib.suppress(psycopg2.Error):
                    cur.execute("SELECT 1/0")

    response = batch_handler(db, record_handler)(sqs_event(5), LambdaContext())
    assert failed(response) == [f"msg-{swallowing[-1]}"]
    assert order_count(orders_db) == 4  # the other four committed


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_a_handler_that_ends_the_transaction_itself_is_refused(
    db: Database, orders_db: AppDb, end: str
) -> None:
    @with_connection(database=db)
    @idempotent("order_id", database=db, payload="order_id")
    def handler(event: dict[str, Any], context: Any) -> str:
        conn = db.get_connection()
        insert_order(conn, event["order_id"], "before")
        getattr(conn, end)()  # a helper library that commits or rolls back on its own
        insert_order(conn, event["order_id"], "after")
        return "done"

    with pytest.raises(LambdaDbError, match="ended the invocation's transaction itself"):
        handler({"order_id": "Z"}, LambdaContext())
    notes = [note for (note,) in orders_db.query("SELECT note FROM orders")]
    assert "after" not in notes  # the part after its own commit was rolled back
    assert all(result is None for _, result in records(orders_db))  # no record of "done"


def test_the_sweep_follows_the_roles_default_isolation(orders_db: AppDb) -> None:
    """A role whose default is REPEATABLE READ: the claim must not sweep (40001 risk)."""
    orders_db.pg.execute(
        f"ALTER ROLE \"{orders_db.role}\" SET default_transaction_isolation = 'repeatable read'"
    )
    orders_db.query(
        "INSERT INTO lambda_db_idempotency (key, expires_at)"
        " SELECT 'old-' || n, now() - interval '1 hour' + n * interval '1 ms'"
        " FROM generate_series(1, 30) n"
    )
    a, b = Database(orders_db.settings), Database(orders_db.settings)
    try:

        @with_connection(database=b)
        @idempotent("k", database=b, payload="k")
        def other(event: dict[str, Any], context: Any) -> str:
            return "other"

        @idempotent("messageId", database=a, payload="body")
        def record_handler(record: dict[str, Any]) -> None:
            if record["messageId"] == "msg-1":  # another environment claims meanwhile
                assert other({"k": "x"}, LambdaContext()) == "other"

        response = batch_handler(a, record_handler)(sqs_event(3), LambdaContext())
        assert failed(response) == []
        left = orders_db.query("SELECT count(*) FROM lambda_db_idempotency WHERE key LIKE 'old-%'")
        assert left == [(30,)]  # nothing swept under REPEATABLE READ
    finally:
        a.close()
        b.close()
        orders_db.pg.execute(f'ALTER ROLE "{orders_db.role}" RESET default_transaction_isolation')


def test_a_result_too_large_to_store_is_refused_and_rolled_back(
    db: Database, orders_db: AppDb
) -> None:
    @with_connection(database=db)
    @idempotent("order_id", database=db, payload="order_id")
    def handler(event: dict[str, Any], context: Any) -> str:
        insert_order(db.get_connection(), event["order_id"])
        return "x" * MAX_RESULT_BYTES

    with pytest.raises(LambdaDbError, match="stores at most"):
        handler({"order_id": "big"}, LambdaContext())
    assert order_count(orders_db) == 0
    assert records(orders_db) == []


def test_tables_sharing_a_long_prefix_get_an_index_each(orders_db: AppDb) -> None:
    first, second = "idem_" + "x" * 50 + "_orders", "idem_" + "x" * 50 + "_refunds"
    conn = orders_db.connect()
    with conn:
        ensure_schema(conn, table=first)
        ensure_schema(conn, table=second)
    conn.close()
    rows = orders_db.query(
        "SELECT tablename FROM pg_indexes WHERE tablename LIKE 'idem_%%'"
        " AND indexname LIKE '%%expires_at'"
    )
    assert sorted(t for (t,) in rows) == sorted([first, second])
