"""``lambda_db.idempotent`` on the real server: once per key, in the invocation's transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

import lambda_db
from lambda_db import (
    ConfigurationError,
    Database,
    IdempotencyMismatchError,
    idempotent,
    with_connection,
)
from lambda_db.idempotency import _decorator
from lambda_db.idempotency._store import Store
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.exactly_once.conftest import insert_order, order_count, records
from tests.support.interpreter import fresh_python
from tests.support.pinlog import PinLog

Handler = Callable[..., Any]


def place_order(db: Database, runs: list[dict[str, Any]], **options: Any) -> Handler:
    """A handler that inserts one order and returns it; ``runs`` records each execution."""

    @with_connection(database=db)
    @idempotent("order_id", database=db, **options)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append(event)
        order = insert_order(db.get_connection(), event["order_id"], event.get("note", ""))
        if event.get("fail"):
            raise RuntimeError("the handler failed after writing")
        return {"id": order, "order_id": event["order_id"]}

    return handler


def test_a_repeat_returns_the_stored_result_without_running(db: Database, orders_db: AppDb) -> None:
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs)
    first = handler({"order_id": "A-1"}, LambdaContext())
    again = handler({"order_id": "A-1"}, LambdaContext())
    assert again == first == {"id": 1, "order_id": "A-1"}
    assert len(runs) == 1
    assert order_count(orders_db) == 1
    ((key, result),) = records(orders_db)
    assert key.startswith("lambda-db:tests.exactly_once.test_idempotent.place_order")
    assert "A-1" not in key  # the key's value is hashed, never stored
    assert json.loads(result or "") == first
    assert lambda_db.idempotency.stats.as_dict() | {"swept": 0, "max_swept": 0} == {
        "claims": 1,
        "replays": 1,
        "unkeyed": 0,
        "mismatches": 0,
        "swept": 0,
        "max_swept": 0,
    }


def test_different_keys_each_run_once(db: Database, orders_db: AppDb) -> None:
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs)
    results = [handler({"order_id": k}, LambdaContext()) for k in ("a", "b", "a", "c", "b")]
    assert [r["id"] for r in results] == [1, 2, 1, 3, 2]
    assert len(runs) == 3
    assert order_count(orders_db) == 3


def test_a_handler_that_raises_leaves_no_record_and_a_retry_runs(
    db: Database, orders_db: AppDb
) -> None:
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs)
    with pytest.raises(RuntimeError, match="failed after writing"):
        handler({"order_id": "B-1", "fail": True}, LambdaContext())
    assert records(orders_db) == []
    assert order_count(orders_db) == 0
    assert handler({"order_id": "B-1"}, LambdaContext())["order_id"] == "B-1"
    assert len(runs) == 2
    assert order_count(orders_db) == 1
    assert orders_db.backends("idle in transaction") == []


def test_the_same_key_with_another_payload_is_a_typed_error_and_writes_nothing(
    db: Database, orders_db: AppDb
) -> None:
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs)
    handler({"order_id": "C-1", "note": "two widgets"}, LambdaContext())
    with pytest.raises(IdempotencyMismatchError) as info:
        handler({"order_id": "C-1", "note": "three widgets"}, LambdaContext())
    assert isinstance(info.value, lambda_db.LambdaDbError)
    assert info.value.key == records(orders_db)[0][0]
    assert "payload=" in str(info.value)
    assert len(runs) == 1
    assert order_count(orders_db) == 1
    assert lambda_db.idempotency.stats.mismatches == 1


def test_payload_names_the_part_that_must_match(db: Database, orders_db: AppDb) -> None:
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs, payload="note")
    first = handler({"order_id": "D-1", "note": "n", "delivery": 1}, LambdaContext())
    again = handler({"order_id": "D-1", "note": "n", "delivery": 2}, LambdaContext())
    assert again == first
    with pytest.raises(IdempotencyMismatchError):
        handler({"order_id": "D-1", "note": "other", "delivery": 3}, LambdaContext())
    assert len(runs) == 1


@pytest.mark.parametrize("event", [{}, {"order_id": None}, {"order_id": ""}])
def test_no_key_runs_normally_every_time(
    db: Database, orders_db: AppDb, event: dict[str, Any]
) -> None:
    runs: list[dict[str, Any]] = []

    @with_connection(database=db)
    @idempotent("order_id", database=db)
    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(event)
        return "ran"

    assert [handler(event, LambdaContext()) for _ in range(2)] == ["ran", "ran"]
    assert len(runs) == 2
    assert records(orders_db) == []
    assert db.stats.checkouts == 0  # no key, and the handler never used the database


def test_a_callable_key_and_a_jmespath_with_powertools_functions(
    db: Database, orders_db: AppDb
) -> None:
    calls: list[str] = []

    @with_connection(database=db)
    @idempotent(lambda event: event["headers"].get("idempotency-key"), database=db)
    def by_header(event: dict[str, Any], context: Any) -> int:
        calls.append("header")
        return len(calls)

    @with_connection(database=db)
    @idempotent("powertools_json(body).order_id", payload="body", database=db)
    def by_body(event: dict[str, Any], context: Any) -> int:
        calls.append("body")
        return len(calls)

    event = {"headers": {"idempotency-key": "k1"}, "body": json.dumps({"order_id": "E-1"})}
    assert by_header(event, LambdaContext()) == by_header(event, LambdaContext()) == 1
    assert by_body(event, LambdaContext()) == by_body(event, LambdaContext()) == 2
    # Same key value, different functions: separate records.
    assert len(records(orders_db)) == 2


def test_above_with_connection_it_refuses_before_running(db: Database, orders_db: AppDb) -> None:
    runs: list[str] = []

    @idempotent("order_id", database=db)
    @with_connection(database=db)
    def wrong_order(event: dict[str, Any], context: Any) -> str:
        runs.append("ran")
        return "ran"

    with pytest.raises(ConfigurationError, match="directly under @with_connection") as info:
        wrong_order({"order_id": "F-1"}, LambdaContext())
    assert info.value.variable == "idempotent"
    assert runs == []
    assert records(orders_db) == []
    assert db.stats.connects == 0


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_scope_without_a_writable_transaction_is_refused(
    db: Database, orders_db: AppDb, autocommit: bool
) -> None:
    @with_connection(database=db, autocommit=autocommit, readonly=None if autocommit else True)
    @idempotent("order_id", database=db)
    def handler(event: dict[str, Any], context: Any) -> str:
        return "ran"

    with pytest.raises(ConfigurationError, match="read-write transaction"):
        handler({"order_id": "G-1"}, LambdaContext())


@pytest.mark.parametrize(
    ("options", "variable"),
    [
        ({"key": "order_id["}, "key"),
        ({"key": 42}, "key"),
        ({"key": "order_id", "payload": ""}, "payload"),
        ({"key": "order_id", "expires_after": 0}, "expires_after"),
        ({"key": "order_id", "expires_after": True}, "expires_after"),
        ({"key": "order_id", "table": "orders; DROP TABLE orders"}, "table"),
    ],
)
def test_bad_options_fail_when_decorating(options: dict[str, Any], variable: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        idempotent(**options)
    assert info.value.variable == variable


def test_a_result_that_is_not_json_rolls_everything_back(db: Database, orders_db: AppDb) -> None:
    @with_connection(database=db)
    @idempotent("order_id", database=db)
    def handler(event: dict[str, Any], context: Any) -> object:
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES ('H-1')")
        return {"when": object()}

    with pytest.raises(TypeError, match="JSON-serialisable"):
        handler({"order_id": "H-1"}, LambdaContext())
    assert order_count(orders_db) == 0
    assert records(orders_db) == []


def test_a_swallowed_database_error_commits_nothing_and_stores_nothing(
    db: Database, orders_db: AppDb
) -> None:
    @with_connection(database=db)
    @idempotent("order_id", database=db)
    def handler(event: dict[str, Any], context: Any) -> str:
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES ('I-1')")
            try:
                cur.execute("SELECT 1/0")
            except psycopg2.errors.DivisionByZero:
                return "handled"
        return "unreachable"

    assert handler({"order_id": "I-1"}, LambdaContext()) == "handled"
    assert order_count(orders_db) == 0
    assert records(orders_db) == []  # a retry runs again, as it must


def test_expired_records_count_as_absent_and_are_swept_a_few_at_a_time(
    db: Database, orders_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_decorator, "SWEEP_LIMIT", 4)
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs)
    handler({"order_id": "J-1"}, LambdaContext())
    orders_db.query(
        "INSERT INTO lambda_db_idempotency (key, expires_at)"
        " SELECT 'old-' || n, now() - n * interval '1 second' FROM generate_series(1, 10) n"
    )
    orders_db.query("UPDATE lambda_db_idempotency SET expires_at = now() - interval '1 second'"
                    " WHERE key LIKE 'lambda-db:%'")  # fmt: skip
    # J-1 expired: it counts as absent, so the handler runs again.
    again = handler({"order_id": "J-1"}, LambdaContext())
    assert len(runs) == 2
    assert again["id"] == 2
    assert lambda_db.idempotency.stats.swept == 4
    for _ in range(3):
        handler({"order_id": f"new-{_}"}, LambdaContext())
    stats = lambda_db.idempotency.stats
    assert (stats.swept, stats.max_swept) == (10, 4)  # 4 + 4 + 2, never more than 4 at once
    # The oldest went first; J-1's record was taken over in place, not swept.
    assert orders_db.query("SELECT count(*) FROM lambda_db_idempotency WHERE key LIKE 'old-%'") == [
        (0,)
    ]
    assert len(records(orders_db)) == 4


def test_the_sweep_reads_the_index_not_the_table(db: Database, orders_db: AppDb) -> None:
    orders_db.query(
        "INSERT INTO lambda_db_idempotency (key, expires_at)"
        " SELECT 'k-' || n, now() + n * interval '1 second' FROM generate_series(1, 20000) n;"
        "ANALYZE lambda_db_idempotency"
    )
    plan = "\n".join(
        row[0]
        for row in orders_db.query(
            "EXPLAIN SELECT key FROM lambda_db_idempotency WHERE expires_at <= now()"
            " AND key <> 'x' ORDER BY expires_at LIMIT 10 FOR UPDATE SKIP LOCKED"
        )
    )
    assert Store("lambda_db_idempotency").index.strip('"') in plan, plan
    assert "Seq Scan" not in plan, plan


def test_a_large_result_is_stored_in_statements_under_16_kb(
    db: Database, orders_db: AppDb, pinlog: PinLog
) -> None:
    big = {"items": ["x'" * 50 for _ in range(1000)], "text": "é" * 3000}  # ~110 KB of JSON

    @with_connection(database=db)
    @idempotent("order_id", database=db)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return big

    with pinlog.capture() as block:
        assert handler({"order_id": "K-1"}, LambdaContext()) == big
    assert handler({"order_id": "K-1"}, LambdaContext()) == big
    sent = block.statements(orders_db.role)
    assert max(len(s.encode()) for s in sent) < 16 * 1024
    assert sum(s.startswith("UPDATE") for s in sent) > 10
    assert block.findings() == []


def test_on_the_wire_a_claim_and_a_store_beside_the_handlers_statements(
    db: Database, orders_db: AppDb, pinlog: PinLog
) -> None:
    runs: list[dict[str, Any]] = []
    handler = place_order(db, runs)
    handler({"order_id": "warm-up"}, LambdaContext())
    with pinlog.capture() as first:
        handler({"order_id": "L-1"}, LambdaContext())
    with pinlog.capture() as repeat:
        handler({"order_id": "L-1"}, LambdaContext())
    kinds = [s.split()[0] for s in first.statements(orders_db.role)]
    assert kinds == ["BEGIN", "WITH", "INSERT", "UPDATE", "COMMIT"]
    # A repeat reads its record in the claim's own round trip (READ COMMITTED).
    assert [s.split()[0] for s in repeat.statements(orders_db.role)] == ["BEGIN", "WITH", "COMMIT"]
    assert first.connections(orders_db.role) == 0
    assert first.findings() == [] and repeat.findings() == []


def test_import_lambda_db_loads_neither_jmespath_nor_powertools_idempotency() -> None:
    code = (
        "import sys, lambda_db, lambda_db.idempotency\n"
        "loaded = [m for m in sys.modules if m.startswith('jmespath')"
        " or m.startswith('aws_lambda_powertools.utilities')]\n"
        "assert not loaded, loaded\n"
        "layer = lambda_db.idempotency.PostgresPersistenceLayer\n"
        "assert 'aws_lambda_powertools.utilities.idempotency' in sys.modules\n"
        "print(layer.__name__)\n"
    )
    assert fresh_python(code) == "PostgresPersistenceLayer"


def test_import_lambda_db_leaves_idempotent_until_it_is_used() -> None:
    """``import lambda_db`` loads no idempotency module (nor hashlib, json, dataclasses, which
    only it needs); ``lambda_db.idempotent`` and ``from lambda_db import idempotent`` load
    it, and both give the same decorator; an unknown name is still an AttributeError."""
    code = (
        "import sys, lambda_db\n"
        "heavy = ('lambda_db.idempotency', 'hashlib', 'json', 'dataclasses')\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "from lambda_db import idempotent\n"
        "from lambda_db.idempotency import idempotent as direct\n"
        "assert idempotent is direct is lambda_db.idempotent, 'not the same decorator'\n"
        "try:\n"
        "    lambda_db.idempotence\n"
        "except AttributeError as exc:\n"
        "    missing = str(exc)\n"
        "print(before, 'lambda_db.idempotency' in sys.modules, missing)\n"
    )
    assert fresh_python(code) == "[] True module 'lambda_db' has no attribute 'idempotence'"
    # The package itself, as the README's schema job and Powertools users reach it.
    code = (
        "import lambda_db\n"
        "assert 'idempotent' in dir(lambda_db) and 'idempotency' in dir(lambda_db)\n"
        "print(lambda_db.idempotency.ensure_schema.__name__)\n"
    )
    assert fresh_python(code) == "ensure_schema"
