"""A COMMIT whose outcome the client cannot know: the retry with the same key is exact.

``CommitRelay`` (lambda_db_lab) sits between lambda-db and the server and loses one
``COMMIT``: either its reply (the server committed; the relay read the whole answer, then
dropped it and closed), or the ``COMMIT`` itself (the server never saw it and rolls back).
Both look the same to the client: "connection lost during COMMIT, outcome unknown"."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lambda_db import ConnectionLostError, Database, idempotent, with_connection
from lambda_db.testing import LambdaContext
from lambda_db_lab.commit_relay import CommitRelay
from tests.conftest import AppDb
from tests.exactly_once.conftest import insert_order, order_count, records


@pytest.fixture
def relay(orders_db: AppDb) -> Iterator[CommitRelay]:
    with CommitRelay(orders_db.pg.host, orders_db.pg.port) as commit_relay:
        yield commit_relay


@pytest.fixture
def relayed_db(orders_db: AppDb, relay: CommitRelay) -> Iterator[Database]:
    """A Database that reaches the server through the relay (plain TCP: it parses it)."""
    db = Database(orders_db.settings.replace(host=relay.host, port=relay.port, sslmode="disable"))
    try:
        yield db
    finally:
        db.close()


def order_handler(db: Database, runs: list[str], *, keyed: bool = True) -> Callable[..., Any]:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append(event["order_id"])
        return {"id": insert_order(db.get_connection(), event["order_id"])}

    inner = idempotent("order_id", database=db)(handler) if keyed else handler
    return with_connection(database=db)(inner)


def lose_commit(relay: CommitRelay, handler: Callable[..., Any], order_id: str, how: str) -> None:
    getattr(relay, f"lose_{how}")()
    with pytest.raises(ConnectionLostError) as info:
        handler({"order_id": order_id}, LambdaContext(timeout=5))
    assert info.value.outcome_unknown, info.value
    assert "outcome is unknown" in str(info.value)
    assert relay.done.wait(5) and relay.lost[-1] == how


def test_reply_lost_after_the_server_committed_the_retry_returns_the_stored_result(
    orders_db: AppDb, relay: CommitRelay, relayed_db: Database
) -> None:
    runs: list[str] = []
    handler = order_handler(relayed_db, runs)
    handler({"order_id": "warm"}, LambdaContext())  # a warm environment, as in production
    lose_commit(relay, handler, "R-1", "reply")
    (row_id,) = orders_db.query("SELECT id FROM orders WHERE order_id = 'R-1'")[0]  # committed
    assert handler({"order_id": "R-1"}, LambdaContext()) == {"id": row_id}
    assert runs == ["warm", "R-1"]  # the retry did not run the handler
    assert orders_db.query("SELECT count(*) FROM orders WHERE order_id = 'R-1'") == [(1,)]
    assert len(records(orders_db)) == 2
    assert relayed_db.stats.connects == 2  # the lost connection was replaced


def test_commit_never_reached_the_server_the_retry_runs_and_writes_once(
    orders_db: AppDb, relay: CommitRelay, relayed_db: Database
) -> None:
    runs: list[str] = []
    handler = order_handler(relayed_db, runs)
    handler({"order_id": "warm"}, LambdaContext())
    lose_commit(relay, handler, "S-1", "request")
    assert orders_db.query("SELECT count(*) FROM orders WHERE order_id = 'S-1'") == [(0,)]
    assert handler({"order_id": "S-1"}, LambdaContext()) == {"id": 3}  # id 2 rolled back
    assert runs == ["warm", "S-1", "S-1"]  # it ran again, since nothing had committed
    assert orders_db.query("SELECT count(*) FROM orders WHERE order_id = 'S-1'") == [(1,)]


@pytest.mark.parametrize("how", ["reply", "request"])
def test_control_without_a_key_the_retry_cannot_know(
    orders_db: AppDb, relay: CommitRelay, relayed_db: Database, how: str
) -> None:
    runs: list[str] = []
    handler = order_handler(relayed_db, runs, keyed=False)
    lose_commit(relay, handler, "T-1", how)
    handler({"order_id": "T-1"}, LambdaContext())
    # Lost reply: a duplicate. Lost request: one row. The client could not tell which.
    assert order_count(orders_db) == (2 if how == "reply" else 1)
