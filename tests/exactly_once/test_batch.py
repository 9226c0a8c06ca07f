"""``process_batch``: one transaction, one savepoint per record, a partial batch response."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from lambda_db import (
    ConfigurationError,
    ConnectionLostError,
    Database,
    idempotent,
    process_batch,
    with_connection,
)
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.exactly_once.conftest import order_count
from tests.support.pinlog import PinLog

FAILING = {3, 7}  # record positions (1-based) whose handler raises


def sqs_event(count: int, *, fifo: bool = False) -> dict[str, Any]:
    queue = "orders.fifo" if fifo else "orders"
    records = []
    for n in range(1, count + 1):
        attributes = {"ApproximateReceiveCount": "1", "SentTimestamp": "1767225600000"}
        if fifo:
            attributes |= {"MessageGroupId": "customer-1", "SequenceNumber": str(n)}
        records.append({
            "messageId": f"msg-{n}",
            "receiptHandle": f"handle-{n}",
            "body": json.dumps({"order_id": f"O-{n}", "fail": n in FAILING}),
            "attributes": attributes,
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
            "awsRegion": "us-east-1",
        })  # fmt: skip
    return {"Records": records}


def stream_event(source: str, count: int) -> dict[str, Any]:
    records = []
    for n in range(1, count + 1):
        data = json.dumps({"order_id": f"O-{n}", "fail": n in FAILING})
        payload: dict[str, Any]
        if source == "aws:kinesis":
            payload = {"kinesis": {"sequenceNumber": f"4959{n:04d}", "partitionKey": "p",
                                   "data": base64.b64encode(data.encode()).decode()}}  # fmt: skip
        else:
            payload = {"dynamodb": {"SequenceNumber": f"11{n:04d}",
                                    "NewImage": {"body": {"S": data}}}}  # fmt: skip
        records.append({"eventSource": source, "eventID": f"e-{n}", **payload})
    return {"Records": records}


def body_of(record: dict[str, Any]) -> dict[str, Any]:
    if "body" in record:
        doc = json.loads(record["body"])
    elif "kinesis" in record:
        doc = json.loads(base64.b64decode(record["kinesis"]["data"]))
    else:
        doc = json.loads(record["dynamodb"]["NewImage"]["body"]["S"])
    assert isinstance(doc, dict)
    return doc


def batch_handler(db: Database, record_handler: Callable[[dict[str, Any]], object]
                  ) -> Callable[..., Any]:  # fmt: skip
    @with_connection(database=db)
    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_batch(event, record_handler, database=db)

    return handler


def save_order(db: Database, runs: list[str]) -> Callable[[dict[str, Any]], object]:
    """Insert the record's order, then fail if the record says so (after writing)."""

    def record_handler(record: dict[str, Any]) -> None:
        doc = body_of(record)
        runs.append(doc["order_id"])
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES (%s)", (doc["order_id"],))
        if doc["fail"]:
            raise ValueError(f"order {doc['order_id']} is invalid")

    return record_handler


def failed(response: dict[str, Any]) -> list[str]:
    assert set(response) == {"batchItemFailures"}
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def test_ten_sqs_records_two_failing_commit_eight(db: Database, orders_db: AppDb) -> None:
    runs: list[str] = []
    response = batch_handler(db, save_order(db, runs))(sqs_event(10), LambdaContext())
    assert failed(response) == ["msg-3", "msg-7"]
    assert len(runs) == 10
    assert order_count(orders_db) == 8
    assert orders_db.query("SELECT order_id FROM orders WHERE order_id IN ('O-3', 'O-7')") == []
    assert db.stats.commits == 1  # one transaction for the batch
    assert orders_db.backends("idle in transaction") == []


def test_redelivered_whole_with_per_record_keys_still_eight_rows(
    db: Database, orders_db: AppDb
) -> None:
    runs: list[str] = []
    keyed = idempotent("messageId", payload="body", database=db)(save_order(db, runs))
    handler = batch_handler(db, keyed)
    first = handler(sqs_event(10), LambdaContext())
    redelivered = sqs_event(10)
    for record in redelivered["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = "2"
        record["receiptHandle"] += "-again"
    again = handler(redelivered, LambdaContext())
    assert failed(first) == failed(again) == ["msg-3", "msg-7"]
    assert order_count(orders_db) == 8
    # The 8 that committed were not run again; the 2 that failed ran (and failed) again.
    assert len(runs) == 10 + 2
    assert orders_db.query("SELECT count(*) FROM lambda_db_idempotency") == [(8,)]


def test_without_keys_a_redelivery_duplicates(db: Database, orders_db: AppDb) -> None:
    handler = batch_handler(db, save_order(db, []))
    handler(sqs_event(10), LambdaContext())
    handler(sqs_event(10), LambdaContext())
    assert order_count(orders_db) == 16  # the control: what the keys prevent


def test_fifo_reports_everything_from_the_first_failure_and_runs_none_of_it(
    db: Database, orders_db: AppDb
) -> None:
    runs: list[str] = []
    response = batch_handler(db, save_order(db, runs))(sqs_event(10, fifo=True), LambdaContext())
    assert failed(response) == [f"msg-{n}" for n in range(3, 11)]
    assert runs == ["O-1", "O-2", "O-3"]  # order kept: nothing after the failure ran
    assert order_count(orders_db) == 2


@pytest.mark.parametrize(
    ("source", "identifiers"),
    [
        ("aws:kinesis", [f"4959{n:04d}" for n in range(3, 11)]),
        ("aws:dynamodb", [f"11{n:04d}" for n in range(3, 11)]),
    ],
)
def test_streams_are_ordered_too(
    db: Database, orders_db: AppDb, source: str, identifiers: list[str]
) -> None:
    runs: list[str] = []
    response = batch_handler(db, save_order(db, runs))(stream_event(source, 10), LambdaContext())
    assert failed(response) == identifiers
    assert order_count(orders_db) == 2


def test_a_batch_without_failures_and_an_empty_one(db: Database, orders_db: AppDb) -> None:
    handler = batch_handler(db, save_order(db, []))
    assert handler({"Records": []}, LambdaContext()) == {"batchItemFailures": []}
    assert db.stats.checkouts == 0  # nothing to do: no connection
    event = sqs_event(4)
    for record in event["Records"]:
        record["body"] = json.dumps({**body_of(record), "fail": False})
    assert handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert order_count(orders_db) == 4


def test_on_the_wire_one_savepoint_round_trip_per_record(
    db: Database, orders_db: AppDb, pinlog: PinLog
) -> None:
    handler = batch_handler(db, save_order(db, []))
    handler(sqs_event(1), LambdaContext())  # warm
    orders_db.query("TRUNCATE orders")
    with pinlog.capture() as block:
        handler(sqs_event(4), LambdaContext())
    sent = [" ".join(s.split()[:2]) if s.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))
            else s.split()[0] for s in block.statements(orders_db.role)]  # fmt: skip
    assert sent == [
        "BEGIN",
        "SAVEPOINT lambda_db_record", "INSERT",          # 1
        "RELEASE SAVEPOINT", "INSERT",                   # 2 (RELEASE ...; SAVEPOINT ...)
        "RELEASE SAVEPOINT", "INSERT", "ROLLBACK TO",    # 3 fails
        "INSERT",                                        # 4: the savepoint is in place
        "COMMIT",
    ]  # fmt: skip
    assert block.findings() == []


def test_a_lost_connection_fails_the_whole_batch(db: Database, orders_db: AppDb) -> None:
    def record_handler(record: dict[str, Any]) -> None:
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES (%s)", (record["messageId"],))
            if record["messageId"] == "msg-2":
                orders_db.terminate_all()
                cur.execute("SELECT 1")

    with pytest.raises(ConnectionLostError):
        batch_handler(db, record_handler)(sqs_event(3), LambdaContext())
    assert order_count(orders_db) == 0  # nothing committed: Lambda retries the batch


def test_a_conflict_fails_the_whole_batch_so_it_can_be_retried(
    db: Database, orders_db: AppDb
) -> None:
    calls: list[str] = []

    def record_handler(record: dict[str, Any]) -> None:
        calls.append(record["messageId"])
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES (%s)", (record["messageId"],))
            if len(calls) == 2:
                cur.execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
                )

    @with_connection(database=db, retry_serialization_failures=1)
    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_batch(event, record_handler, database=db)

    assert handler(sqs_event(3), LambdaContext()) == {"batchItemFailures": []}
    assert calls == ["msg-1", "msg-2", "msg-1", "msg-2", "msg-3"]  # the whole batch, again
    assert order_count(orders_db) == 3


def test_outside_a_transaction_it_refuses(db: Database, orders_db: AppDb) -> None:
    with pytest.raises(ConfigurationError, match="inside a @with_connection handler"):
        process_batch(sqs_event(1), lambda record: None, database=db)

    @with_connection(database=db, autocommit=True)
    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_batch(event, lambda record: None, database=db)

    with pytest.raises(ConfigurationError):
        handler(sqs_event(1), LambdaContext())


@pytest.mark.parametrize(
    "event",
    [{}, {"Records": "x"}, {"Records": [{"eventSource": "aws:s3"}]}, [1]],
    ids=["no-records", "not-a-list", "s3", "not-a-mapping"],
)
def test_an_event_that_is_not_a_batch_is_refused(db: Database, event: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        process_batch(event, lambda record: None, database=db)


def test_a_database_error_in_a_record_is_rolled_back_alone(db: Database, orders_db: AppDb) -> None:
    def record_handler(record: dict[str, Any]) -> None:
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id) VALUES (%s)", (record["messageId"],))
            if record["messageId"] == "msg-2":
                # GENERATED ALWAYS: the server refuses, and the transaction is aborted.
                cur.execute("INSERT INTO orders (id, order_id) VALUES (1, 'x')")

    response = batch_handler(db, record_handler)(sqs_event(3), LambdaContext())
    assert failed(response) == ["msg-2"]
    assert [r[0] for r in orders_db.query("SELECT order_id FROM orders ORDER BY id")] == [
        "msg-1",
        "msg-3",
    ]
