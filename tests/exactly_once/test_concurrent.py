"""Concurrent duplicates: the unique index makes them wait, and exactly one runs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import lambda_db
from lambda_db import Database, DeadlineExceededError, idempotent, with_connection
from lambda_db.testing import LambdaContext
from lambda_db_lab.at_once import invoke_at_once
from tests.conftest import AppDb
from tests.exactly_once.conftest import order_count
from tests.support.databases import opened

HOLD = 0.3


def test_eight_environments_with_the_same_key_run_it_once(orders_db: AppDb) -> None:
    results = invoke_at_once(
        "tests.exactly_once.handlers:hold_order",
        {"order_id": "P-1", "hold": HOLD},
        env=dict(orders_db),
        count=8,
        timeout=10.0,
    )
    assert [r.error for r in results] == [None] * 8, [r.message for r in results]
    assert len({json.dumps(r.value, sort_keys=True) for r in results}) == 1  # identical
    assert order_count(orders_db) == 1
    (note,) = orders_db.query("SELECT note FROM orders")[0]
    winner = results[0].value["ran_in"]
    assert note == f"pid {winner}" and winner in {r.pid for r in results}
    assert sum(r.idempotency["claims"] for r in results) == 1
    assert sum(r.idempotency["replays"] for r in results) == 7
    ran = next(r for r in results if r.pid == winner)
    assert ran.seconds >= HOLD
    # Every duplicate that started while the first held the key waited for its COMMIT.
    for r in results:
        if r.started < ran.ended - HOLD / 2:
            assert r.ended >= ran.ended - 0.05, (r, ran)
        assert r.seconds < r.timeout
    assert orders_db.backends("idle in transaction") == []


Handler = Callable[[dict[str, Any], Any], Any]


def holder(db: Database, runs: list[str], name: str, *, hold: float, fail: bool = False,
           serializable: bool = False) -> Handler:  # fmt: skip
    """A handler that claims ``order_id``, writes, sleeps ``hold`` seconds, maybe fails;
    ``serializable``: in a SERIALIZABLE transaction, retried once after a conflict."""

    @with_connection(
        database=db,
        isolation_level="SERIALIZABLE" if serializable else None,
        retry_serialization_failures=1 if serializable else 0,
    )
    @idempotent("order_id", database=db)
    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(name)
        with db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO orders (order_id, note) VALUES (%s, %s)",
                        (event["order_id"], name))  # fmt: skip
        time.sleep(hold)
        if fail:
            raise RuntimeError(f"{name} failed")
        return name

    return handler


def run_together(calls: dict[str, tuple[Handler, float]], *, stagger: float = 0.1
                 ) -> dict[str, Any]:  # fmt: skip
    """Call each handler in its own thread (in order, ``stagger`` apart); results by name."""
    results: dict[str, Any] = {}

    def call(name: str, handler: Handler, timeout: float) -> None:
        started = time.monotonic()
        try:
            results[name] = handler({"order_id": "Q-1"}, LambdaContext(timeout=timeout))
        except Exception as exc:
            results[name] = exc
        results[f"{name} seconds"] = time.monotonic() - started

    threads = []
    for name, (handler, timeout) in calls.items():
        thread = threading.Thread(target=call, args=(name, handler, timeout))
        thread.start()
        threads.append(thread)
        time.sleep(stagger)
    for thread in threads:
        thread.join(30)
    return results


@pytest.fixture
def two_dbs(orders_db: AppDb) -> Any:
    dbs: list[Database] = []
    try:
        for _ in range(2):
            dbs.append(opened(Database(orders_db.settings)))  # before the threads start
        yield dbs
    finally:
        for db in dbs:
            db.close()


def test_a_duplicate_whose_deadline_comes_first_gets_a_typed_error_in_time(
    orders_db: AppDb, two_dbs: list[Database]
) -> None:
    runs: list[str] = []
    first, second = two_dbs
    results = run_together(
        {
            "first": (holder(first, runs, "first", hold=2.0), 10.0),
            "second": (holder(second, runs, "second", hold=0.0), 1.0),
        }
    )
    assert results["first"] == "first"
    assert isinstance(results["second"], DeadlineExceededError)
    assert not results["second"].outcome_unknown  # it never reached COMMIT
    assert results["second seconds"] < 1.0
    assert runs == ["first"]
    assert order_count(orders_db) == 1
    # Its environment's next invocation gets the stored result.
    again = holder(second, runs, "second", hold=0.0)({"order_id": "Q-1"}, LambdaContext())
    assert again == "first"


def test_a_duplicate_runs_when_the_first_rolls_back(
    orders_db: AppDb, two_dbs: list[Database]
) -> None:
    runs: list[str] = []
    first, second = two_dbs
    results = run_together(
        {
            "first": (holder(first, runs, "first", hold=0.5, fail=True), 10.0),
            "second": (holder(second, runs, "second", hold=0.0), 10.0),
        }
    )
    assert isinstance(results["first"], RuntimeError)
    assert results["second"] == "second"
    assert results["second seconds"] >= 0.3  # it waited for the first's ROLLBACK
    assert runs == ["first", "second"]
    assert orders_db.query("SELECT note FROM orders") == [("second",)]


def test_serializable_duplicates_resolve_with_one_conflict_retry(
    orders_db: AppDb, two_dbs: list[Database]
) -> None:
    runs: list[str] = []
    first, second = two_dbs
    results = run_together(
        {
            "first": (holder(first, runs, "first", hold=0.5, serializable=True), 10.0),
            "second": (holder(second, runs, "second", hold=0.0, serializable=True), 10.0),
        }
    )
    assert results["first"] == results["second"] == "first"
    assert runs == ["first"]
    assert second.stats.conflict_retries == 1  # 40001 at the claim, then the stored result
    assert order_count(orders_db) == 1


def test_serializable_invocations_with_different_keys_do_not_conflict(
    orders_db: AppDb, two_dbs: list[Database]
) -> None:
    """The claim reads nothing: a read (or the expired-row sweep) there takes SSI predicate
    locks that make two concurrent SERIALIZABLE invocations fail one of them."""
    orders_db.query(
        "INSERT INTO lambda_db_idempotency (key, expires_at)"
        " SELECT 'old-' || n, now() - interval '1 hour' FROM generate_series(1, 50) n"
    )
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def invoke(db: Database, key: str) -> None:
        @with_connection(database=db, isolation_level="SERIALIZABLE")
        @idempotent("order_id", database=db)
        def handler(event: dict[str, Any], context: Any) -> str:
            with db.get_connection().cursor() as cur:
                cur.execute("INSERT INTO orders (order_id) VALUES (%s)", (key,))
            barrier.wait(5)  # both have claimed and written before either commits
            return key

        try:
            results[key] = handler({"order_id": key}, LambdaContext(timeout=10))
        except Exception as exc:
            results[key] = exc

    pairs = zip(two_dbs, "ab", strict=True)
    threads = [threading.Thread(target=invoke, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"a": "a", "b": "b"}
    assert lambda_db.idempotency.stats.swept == 0  # no sweep under SERIALIZABLE
