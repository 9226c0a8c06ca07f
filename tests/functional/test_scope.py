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


def test_a_thread_that_asks_after_the_invocation_ended_is_refused(env_db: AppDb) -> None:
    """A fire-and-forget thread must not check out (and arm) a connection no scope ends."""
    import threading

    started = threading.Event()
    result: list[BaseException | None] = []

    def late() -> None:
        started.wait(5)
        try:
            lambda_db.get_connection()
            result.append(None)
        except lambda_db.LambdaDbError as exc:
            result.append(exc)

    db = lambda_db.default_database()
    scope_seen: list[Any] = []

    @with_connection
    def handler(event: object, context: object) -> None:
        scope_seen.append(db.current)
        threading.Thread(target=late).start()

    handler({}, LambdaContext())
    # The thread asks the scope it saw (kept past its invocation).
    with pytest.raises(lambda_db.LambdaDbError, match="after the invocation ended"):
        scope_seen[0].connection  # noqa: B018 (the access is the point)
    started.set()
    wait_for(lambda: bool(result), "the late thread")
    assert result[0] is None  # outside any scope now: a plain get_connection()
    assert db._transport is None or db._transport.cut_at is None  # nothing left armed


def test_a_ping_sends_no_set_after_a_handler_changed_characteristics(
    env_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler may set conn.readonly itself (it travels with BEGIN); the idle ping that
    toggles autocommit must not make psycopg2 send SET default_transaction_read_only."""
    monkeypatch.setenv("DB_IDLE_PING_AFTER", "0")
    lambda_db.reset()

    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> None:
        conn.readonly = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")

    handler({}, LambdaContext())
    handler({}, LambdaContext())  # pings first: the pin recorder fails the test on a SET
    assert lambda_db.default_database().stats.pings >= 1


def test_the_isolation_level_is_checked_when_decorating() -> None:
    with pytest.raises(lambda_db.ConfigurationError) as info:
        with_connection(isolation_level="SERIALISABLE")
    assert info.value.variable == "isolation_level"


def test_conflict_retries_are_refused_with_autocommit() -> None:
    with pytest.raises(lambda_db.ConfigurationError) as info:
        with_connection(autocommit=True, retry_serialization_failures=2)
    assert info.value.variable == "retry_serialization_failures"


def test_a_scope_is_used_once(app_db: AppDb) -> None:
    db = Database(app_db.settings)
    scope = db.invocation(LambdaContext())
    with scope:
        pass
    with pytest.raises(lambda_db.LambdaDbError, match="used once"), scope:
        pass
    db.close()


def test_a_handler_busy_past_the_deadline_is_told_so(env_db: AppDb) -> None:
    import time

    @with_connection
    def handler(event: object, context: object) -> None:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('busy')")
        time.sleep(1.3)  # the handler's own work, past the cutoff (0.875 s for 1 s)

    with pytest.raises(lambda_db.DeadlineExceededError) as info:
        handler({}, LambdaContext(timeout=1.0))
    message = str(info.value)
    assert "still running" in message and "database idle" in message
    assert "open transaction was not committed" in message
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    stats = lambda_db.default_database().stats
    assert (stats.deadlines_exceeded, stats.connections_lost) == (1, 0)


def test_a_forked_child_leaves_its_parents_session_alone(env_db: AppDb) -> None:
    import os

    @with_connection
    def handler(event: object, context: object) -> int:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    parent_pid = handler({}, LambdaContext())
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports by its exit status
        try:
            code = 0 if handler({}, LambdaContext()) != parent_pid else 10
        except BaseException:
            code = 20
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # its own session, not the parent's
    assert handler({}, LambdaContext()) == parent_pid  # the parent's session survived
    assert lambda_db.default_database().stats.connects == 1


def test_a_nested_decorator_joins_the_invocation_in_progress(env_db: AppDb) -> None:
    @with_connection
    def inner(event: object, context: object) -> Any:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('inner')")
        return lambda_db.default_database().current

    @with_connection
    def outer(event: object, context: object) -> None:
        scope = lambda_db.default_database().current
        assert inner(event, context) is scope  # one scope, one transaction
        raise RuntimeError("the outer decorator ends it: rolled back")

    with pytest.raises(RuntimeError):
        outer({}, LambdaContext())
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]

    @with_connection(readonly=True)
    def readonly(event: object, context: object) -> None:
        return None

    @with_connection
    def plain(event: object, context: object) -> None:
        readonly(event, context)  # options of its own cannot apply to the joined one

    with pytest.raises(lambda_db.ConfigurationError, match="outer decorator"):
        plain({}, LambdaContext())


def test_a_cursor_used_after_close_is_the_handlers_error_not_a_lost_connection(
    env_db: AppDb,
) -> None:
    @with_connection
    def handler(event: object, context: object) -> None:
        cur = lambda_db.get_connection().cursor()
        cur.close()
        cur.execute("SELECT 1")  # the driver's InterfaceError: the cursor, not the link

    with pytest.raises(Exception, match="closed") as info:
        handler({}, LambdaContext())
    assert not isinstance(info.value, lambda_db.ConnectionLostError)
    stats = lambda_db.default_database().stats
    assert (stats.connections_lost, stats.connects) == (0, 1)  # the connection was kept


def test_joining_compares_isolation_levels_regardless_of_case(env_db: AppDb) -> None:
    @with_connection(isolation_level="serializable")
    def inner(event: object, context: object) -> str:
        return str(lambda_db.default_database().current.isolation_level)  # type: ignore[union-attr]

    @with_connection(isolation_level="SERIALIZABLE")
    def outer(event: object, context: object) -> str:
        return inner(event, context)

    assert outer({}, LambdaContext()) == "SERIALIZABLE"


def test_a_transactional_handler_refuses_to_join_an_autocommit_invocation(env_db: AppDb) -> None:
    """Joined into autocommit=True, the inner handler's first INSERT would commit alone and
    survive its own failure: it is refused before it runs a statement."""

    @with_connection
    def inner(event: object, context: object) -> None:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("INSERT INTO items VALUES ('debit')")
        raise RuntimeError("the credit failed")

    @with_connection(autocommit=True)
    def outer(event: object, context: object) -> None:
        inner(event, context)

    with pytest.raises(lambda_db.ConfigurationError, match="autocommit=True") as info:
        outer({}, LambdaContext())
    assert info.value.variable == "autocommit"
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]


def test_a_refused_join_names_the_option_that_differs(env_db: AppDb) -> None:
    @with_connection(readonly=True)
    def inner(event: object, context: object) -> None:
        return None

    @with_connection(isolation_level="SERIALIZABLE")
    def outer(event: object, context: object) -> None:
        inner(event, context)

    with pytest.raises(lambda_db.ConfigurationError, match="outer decorator") as info:
        outer({}, LambdaContext())
    assert info.value.variable == "isolation_level"  # the first that differs: SERIALIZABLE/None

    @with_connection(autocommit=True)
    def reader(event: object, context: object) -> None:
        return None

    @with_connection
    def writer(event: object, context: object) -> None:
        reader(event, context)

    with pytest.raises(lambda_db.ConfigurationError) as info:
        writer({}, LambdaContext())
    assert info.value.variable == "autocommit"


def test_a_scope_kept_past_its_invocation_hands_out_nothing(env_db: AppDb) -> None:
    db = Database()
    kept: list[Any] = []
    with db.invocation(LambdaContext()) as scope:
        scope.connection.cursor().execute("SELECT 1")
        kept.append(scope)
    with pytest.raises(lambda_db.LambdaDbError, match="after the invocation ended"):
        kept[0].connection.cursor().execute("INSERT INTO items VALUES ('orphan')")
    assert int(db.get_connection().info.transaction_status) == 0  # nothing left open
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    db.close()


def test_a_thread_that_looked_before_the_scope_started_gets_the_scopes_connection(
    env_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread in get_connection() that saw no scope, then waited for the lock while one
    started and checked out, must not health-check (ping, disarm) the scope's connection."""
    import threading

    monkeypatch.setenv("DB_IDLE_PING_AFTER", "0")  # every acquire() would ping
    db = Database()
    db.get_connection()  # connected, idle
    got: list[Any] = []
    with db._lock:  # hold the lock: the thread reads _scope (None) and then waits here
        thread = threading.Thread(target=lambda: got.append(db.get_connection()))
        thread.start()
        threading.Event().wait(0.2)  # let it reach the lock
        with db.invocation(LambdaContext(30.0)) as scope:
            conn = scope.connection
            transport = db._transport
            assert transport is not None and transport.cut_at is not None  # armed
            pings = db.stats.pings
            db._lock.release()  # the thread goes on while the scope is in progress
            try:
                thread.join(5)
                assert got == [conn]
                assert transport.cut_at is not None  # the scope's alarm is still set
                assert db.stats.pings == pings  # and nobody pinged its connection
            finally:
                db._lock.acquire()
    db.close()
