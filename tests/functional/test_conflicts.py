"""Conflict retries: a serialization failure re-runs the whole handler, never one statement."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import lambda_db
from lambda_db import Database, with_connection
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.databases import opened
from tests.support.drivers import Kit

Handler = Callable[[Any, Any], int]


def server_raises(conn: Any, errcode: str) -> None:
    """Have the server itself raise ``errcode`` (so the error carries its SQLSTATE)."""
    with conn.cursor() as cur:
        cur.execute(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{errcode}'; END $$")


@pytest.fixture
def on_call(app_db: AppDb) -> AppDb:
    """Two doctors on call: the classic write-skew example of SERIALIZABLE's docs."""
    app_db.query(
        "CREATE TABLE doctors (name text PRIMARY KEY, on_call bool NOT NULL);"
        "INSERT INTO doctors VALUES ('alice', true), ('bob', true);"
        f"GRANT ALL ON doctors TO {app_db.role}"
    )
    return app_db


def go_off_call(db: Database, name: str, runs: Counter[str], barrier: threading.Barrier,
                retries: int) -> Handler:  # fmt: skip
    """A handler that leaves the rota if someone else is still on call. Its first run waits
    for the other's, so both read before either writes: a serialization failure."""

    @with_connection(
        database=db, inject="conn", isolation_level="SERIALIZABLE",
        retry_serialization_failures=retries,
    )  # fmt: skip
    def handler(event: object, context: object, conn: Any) -> int:
        runs[name] += 1
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM doctors WHERE on_call")
            row = cur.fetchone()
            assert row is not None
            if runs[name] == 1:
                barrier.wait(10)
            if row[0] >= 2:
                cur.execute("UPDATE doctors SET on_call = false WHERE name = %s", (name,))
        return int(row[0])

    return handler


def run_both(handlers: dict[str, Handler]) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def call(name: str) -> None:
        try:
            results[name] = handlers[name]({}, LambdaContext(timeout=10))
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in handlers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_conflicting_serializable_invocations_both_succeed_each_once(on_call: AppDb) -> None:
    dbs = {name: opened(Database(on_call.settings)) for name in ("alice", "bob")}
    runs: Counter[str] = Counter()
    barrier = threading.Barrier(2)
    handlers = {n: go_off_call(db, n, runs, barrier, retries=3) for n, db in dbs.items()}
    results = run_both(handlers)
    assert sorted(results.values()) == [1, 2]  # one saw two on call, the retried one saw one
    assert sorted(runs.values()) == [1, 2]  # the loser ran again, whole
    assert on_call.query("SELECT count(*) FROM doctors WHERE on_call") == [(1,)]
    assert sum(db.stats.conflict_retries for db in dbs.values()) == 1
    assert on_call.backends("idle in transaction") == []
    for db in dbs.values():
        db.close()


def test_without_retries_the_conflict_propagates_unchanged(on_call: AppDb, dbapi: Kit) -> None:
    dbs = {name: opened(Database(on_call.settings)) for name in ("alice", "bob")}
    runs: Counter[str] = Counter()
    barrier = threading.Barrier(2)
    handlers = {n: go_off_call(db, n, runs, barrier, retries=0) for n, db in dbs.items()}
    results = run_both(handlers)
    failed = [r for r in results.values() if isinstance(r, Exception)]
    assert len(failed) == 1
    assert isinstance(failed[0], dbapi.errors.SerializationFailure)
    assert on_call.query("SELECT count(*) FROM doctors WHERE on_call") == [(1,)]
    for db in dbs.values():
        db.close()


def test_no_retry_without_time_left(app_db: AppDb, dbapi: Kit) -> None:
    db = Database(app_db.settings.replace(deadline_margin=0.9))
    runs: list[int] = []

    @with_connection(database=db, retry_serialization_failures=5)
    def handler(event: object, context: object) -> None:
        runs.append(1)
        conn = db.get_connection()
        time.sleep(0.1)  # what was left of the connect budget (0.1 s) is spent
        server_raises(conn, "serialization_failure")

    with pytest.raises(dbapi.errors.SerializationFailure):
        handler({}, LambdaContext(timeout=1.0))
    assert runs == [1]
    db.close()


def test_other_errors_are_not_retried(app_db: AppDb) -> None:
    runs: list[int] = []

    @with_connection(database=Database(app_db.settings), retry_serialization_failures=5)
    def handler(event: object, context: object) -> None:
        runs.append(1)
        raise ValueError("a bug, not a conflict")

    with pytest.raises(ValueError, match="a bug"):
        handler({}, LambdaContext())
    assert runs == [1]


def test_a_conflict_wrapped_by_the_handler_is_still_recognised(app_db: AppDb, dbapi: Kit) -> None:
    db = Database(app_db.settings)
    runs: list[int] = []

    class OrderFailed(Exception):
        pass

    @with_connection(database=db, retry_serialization_failures=1)
    def handler(event: object, context: object) -> str:
        runs.append(1)
        if len(runs) == 1:
            try:
                server_raises(db.get_connection(), "deadlock_detected")
            except dbapi.Error as exc:
                raise OrderFailed("could not place the order") from exc
        return "placed"

    assert handler({}, LambdaContext()) == "placed"
    assert db.stats.conflict_retries == 1
    db.close()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_the_retry_count_is_checked_when_decorating(bad: Any) -> None:
    with pytest.raises(lambda_db.ConfigurationError) as info:
        with_connection(retry_serialization_failures=bad)
    assert info.value.variable == "retry_serialization_failures"
