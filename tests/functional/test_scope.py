"""The invocation scope: lazy, no costlier than the naive pattern, and its options."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import lambda_db
from lambda_db import Database, with_connection
from lambda_db.testing import LambdaContext
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb


@pytest.fixture
def env_db(app_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> AppDb:
    """``app_db`` exported as the process environment, as Lambda would."""
    for key, value in app_db.items():
        monkeypatch.setenv(key, value)
    app_db.query(f"CREATE TABLE items (id text PRIMARY KEY); GRANT ALL ON items TO {app_db.role}")
    return app_db


def transaction_status() -> int:
    """libpq's transaction status of the invocation's connection (0 idle, 2 in transaction)."""
    return int(lambda_db.get_connection().info.transaction_status)


def test_an_invocation_that_never_uses_the_database_opens_nothing(env_db: AppDb) -> None:
    @with_connection
    def handler(event: dict[str, Any], context: object) -> int:
        if event.get("bad"):
            return 400  # refused before any database work
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('x')")
        return 201

    for _ in range(5):
        assert handler({"bad": True}, LambdaContext()) == 400
    stats = lambda_db.default_database().stats
    assert (stats.invocations, stats.checkouts, stats.connects) == (5, 0, 0)
    assert env_db.backends() == []
    assert handler({}, LambdaContext()) == 201
    assert (stats.checkouts, stats.connects, stats.commits) == (1, 1, 1)


def test_an_untouched_invocation_answers_even_when_the_database_is_down(
    env_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DB_PORT", str(s.getsockname()[1]))  # nothing listens there

    @with_connection
    def handler(event: object, context: object) -> int:
        return 400

    assert handler({}, LambdaContext()) == 400


def test_autocommit_runs_without_a_transaction(env_db: AppDb) -> None:
    @with_connection(autocommit=True)
    def read(event: object, context: object) -> int:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
        return transaction_status()

    @with_connection
    def write(event: object, context: object) -> int:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('w')")
        return transaction_status()

    assert read({}, LambdaContext()) == 0  # no BEGIN was sent: idle after the statement
    assert write({}, LambdaContext()) == 2  # the next invocation is transactional again
    assert read({}, LambdaContext()) == 0
    conn = lambda_db.get_connection()
    assert conn.autocommit is False  # outside a scope: the driver's default again
    assert env_db.query("SELECT id FROM items") == [("w",)]


def test_autocommit_refuses_transaction_options_when_decorating() -> None:
    with pytest.raises(lambda_db.ConfigurationError) as info:
        with_connection(autocommit=True, readonly=True)
    assert info.value.variable == "autocommit"
    assert "pins RDS Proxy" in str(info.value)


def test_inject_checks_out_at_the_start(env_db: AppDb) -> None:
    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> bool:
        return conn is lambda_db.get_connection()

    assert handler({}, LambdaContext()) is True
    assert lambda_db.default_database().stats.checkouts == 1


def test_scopes_do_not_nest_on_one_database(app_db: AppDb) -> None:
    db = Database(app_db.settings)
    with db.invocation(LambdaContext()), pytest.raises(lambda_db.LambdaDbError, match="re-entrant"):
        db.invocation(LambdaContext()).__enter__()
    with db.invocation(LambdaContext()) as scope:  # the first scope ended cleanly
        assert scope.conn is None
    db.close()


@pytest.mark.drivers("psycopg2", reason="psycopg 3 has no large object API (lo_* in SQL only)")
def test_large_objects_work_under_the_deadline(env_db: AppDb) -> None:
    """No wait callback during the handler: psycopg2 allows large objects."""

    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> bytes:
        lob = conn.lobject(mode="wb")
        lob.write(b"lambda-db")
        oid = lob.oid
        lob.close()
        data: bytes = conn.lobject(oid, mode="rb").read()
        conn.lobject(oid).unlink()
        return data

    assert handler({}, LambdaContext(timeout=5)) == b"lambda-db"


def test_a_transaction_the_handler_committed_itself_is_kept(env_db: AppDb) -> None:
    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('early')")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('late')")
        raise RuntimeError("after the handler's own commit")

    with pytest.raises(RuntimeError):
        handler({}, LambdaContext())
    assert env_db.query("SELECT id FROM items") == [("early",)]


def test_a_handler_that_closes_the_connection_gets_a_typed_error_and_no_leak(
    env_db: AppDb,
) -> None:
    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> None:
        conn.close()

    with pytest.raises(lambda_db.ConnectionLostError):
        handler({}, LambdaContext())
    wait_for(lambda: env_db.backends() == [], "the closed session to end")
    assert lambda_db.default_database()._transport is None  # the socket's duplicate released
