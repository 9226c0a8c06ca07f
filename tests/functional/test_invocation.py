"""The handler decorator on a real server: one connection, scoped transactions, typed failures."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lambda_db
from lambda_db import Database, _snapstart, with_connection
from lambda_db.testing import LambdaContext
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb
from tests.support.drivers import Kit


@pytest.fixture
def env_db(app_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> AppDb:
    """``app_db`` exported as the process environment, as Lambda would."""
    for key, value in app_db.items():
        monkeypatch.setenv(key, value)
    app_db.query(
        f"CREATE TABLE items (id text PRIMARY KEY, n int); GRANT ALL ON items TO {app_db.role}"
    )
    return app_db


def insert(item_id: str, n: int = 0) -> None:
    with lambda_db.get_connection().cursor() as cur:
        cur.execute("INSERT INTO items VALUES (%s, %s)", (item_id, n))


def test_hundred_invocations_use_one_server_connection(env_db: AppDb) -> None:
    @with_connection
    def handler(event: dict[str, Any], context: Any) -> str:
        insert(event["id"])
        return "ok"

    for i in range(100):
        assert handler({"id": f"i{i}"}, LambdaContext()) == "ok"
    rows = env_db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (env_db.application_name,),
    )
    assert rows == [(1,)]
    assert env_db.query("SELECT count(*) FROM items") == [(100,)]
    stats = lambda_db.default_database().stats
    assert (stats.connects, stats.invocations, stats.commits) == (1, 100, 100)


def test_get_connection_inside_is_the_invocations_connection(env_db: AppDb) -> None:
    seen: list[object] = []

    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: object) -> None:
        seen.extend([conn, lambda_db.get_connection(), lambda_db.get_connection()])

    handler({}, LambdaContext())
    assert seen[0] is seen[1] is seen[2]


def test_raising_handler_leaves_no_row_and_no_open_transaction(env_db: AppDb) -> None:
    @with_connection
    def handler(event: object, context: object) -> None:
        insert("doomed")
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):  # the original propagates
        handler({}, LambdaContext())
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    assert env_db.backends("idle in transaction") == []
    assert lambda_db.default_database().stats.rollbacks == 1


def test_handler_that_swallows_a_database_error_is_rolled_back_not_failed(
    env_db: AppDb, dbapi: Kit
) -> None:
    @with_connection
    def handler(event: object, context: object) -> int:
        insert("dup")
        try:
            insert("dup")
        except dbapi.errors.UniqueViolation:
            return 409
        return 201

    assert handler({}, LambdaContext()) == 409
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]  # the aborted tx wrote nothing
    assert env_db.backends("idle in transaction") == []
    assert handler({}, LambdaContext()) == 409  # and the connection is still good


def test_connection_killed_mid_invocation_fails_it_typed_and_half_nothing(
    env_db: AppDb, dbapi: Kit
) -> None:
    @with_connection
    def handler(event: dict[str, Any], context: object) -> str:
        insert(event["id"])
        if event.get("kill"):
            env_db.terminate_all()
        insert(event["id"] + "-second")
        return "ok"

    with pytest.raises(lambda_db.ConnectionLostError) as info:
        handler({"id": "a", "kill": True}, LambdaContext())
    assert isinstance(info.value.__cause__, dbapi.OperationalError)
    assert "nothing was replayed" in str(info.value)
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    # The next invocation gets a fresh connection and succeeds.
    assert handler({"id": "b"}, LambdaContext()) == "ok"
    assert env_db.query("SELECT id FROM items ORDER BY id") == [("b",), ("b-second",)]
    assert lambda_db.default_database().stats.connections_lost == 1


def test_backend_terminated_between_invocations(env_db: AppDb) -> None:
    @with_connection
    def handler(event: object, context: object) -> int:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    first = handler({}, LambdaContext())
    env_db.terminate_all()
    second = handler({}, LambdaContext())
    assert first != second


def test_server_restarted_between_invocations(env_db: AppDb) -> None:
    @with_connection
    def handler(event: dict[str, str], context: object) -> str:
        insert(event["id"])
        return "ok"

    assert handler({"id": "before"}, LambdaContext()) == "ok"
    env_db.pg.restart()
    assert handler({"id": "after"}, LambdaContext()) == "ok"
    assert env_db.query("SELECT count(*) FROM items") == [(2,)]


def test_a_runaway_statement_is_cut_at_the_deadline_by_default(env_db: AppDb, dbapi: Kit) -> None:
    @with_connection
    def handler(event: object, context: object) -> None:
        insert("runaway")
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("SELECT pg_sleep(10)")

    started = time.monotonic()
    with pytest.raises(lambda_db.DeadlineExceededError) as info:
        handler({}, LambdaContext(timeout=1.5))
    elapsed = time.monotonic() - started
    assert elapsed < 1.5  # before the function's timeout: at 1.5 s less half the margin
    assert not info.value.outcome_unknown
    assert "open transaction was not committed" in str(info.value)
    assert "had not answered" in str(info.value)  # a statement was waiting
    assert isinstance(info.value.__cause__, dbapi.OperationalError)
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    stats = lambda_db.default_database().stats
    assert (stats.deadlines_exceeded, stats.connections_lost) == (1, 1)

    # The next invocation reconnects and succeeds.
    @with_connection
    def ok(event: object, context: object) -> str:
        insert("next")
        return "ok"

    assert ok({}, LambdaContext()) == "ok"
    assert env_db.query("SELECT id FROM items") == [("next",)]


def test_no_commit_after_the_deadline(env_db: AppDb) -> None:
    @with_connection
    def handler(event: object, context: object) -> str:
        insert("late")
        time.sleep(1.4)  # the handler's own work runs past the cutoff (1.3125 s)
        return "too late"

    with pytest.raises(lambda_db.DeadlineExceededError) as info:
        handler({}, LambdaContext(timeout=1.5))
    assert not info.value.outcome_unknown  # no COMMIT was sent: a known outcome
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    wait_for(lambda: env_db.backends() == [], "the cut session to end")


@pytest.fixture
def local_timeout(env_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> AppDb:
    """The opt-in per-invocation statement_timeout (direct connections only: it pins)."""
    monkeypatch.setenv("DB_LOCAL_STATEMENT_TIMEOUT", "true")
    lambda_db.reset()
    return env_db


@pytest.mark.pins("the opt-in DB_LOCAL_STATEMENT_TIMEOUT sends SET LOCAL by design")
def test_opt_in_statement_timeout_is_transaction_local(local_timeout: AppDb) -> None:
    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> str:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            row = cur.fetchone()
            assert row is not None
            return str(row[0])

    shown = handler({}, LambdaContext(timeout=5))
    assert shown.endswith("ms")
    assert 3500 <= int(shown[:-2]) <= 4000  # 5 s remaining minus the 1 s margin
    conn = lambda_db.get_connection()  # outside any invocation: the session is untouched
    with conn.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == ("0",)
    conn.rollback()


@pytest.mark.pins("the opt-in DB_LOCAL_STATEMENT_TIMEOUT sends SET LOCAL by design")
def test_opt_in_statement_timeout_cancels_a_runaway_statement_server_side(
    local_timeout: AppDb, dbapi: Kit
) -> None:
    @with_connection
    def handler(event: object, context: object) -> None:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("SELECT pg_sleep(10)")

    with pytest.raises(dbapi.errors.QueryCanceled):  # the server's, before the watchdog
        handler({}, LambdaContext(timeout=1.5))
    assert local_timeout.backends("idle in transaction") == []
    stats = lambda_db.default_database().stats
    assert (stats.connects, stats.deadlines_exceeded) == (1, 0)  # the connection survived


def test_no_password_in_debug_logs_errors_or_reprs(
    app_db: AppDb, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = Database(app_db.settings, sleep=lambda s: None)
    with db.invocation(LambdaContext()) as scope, scope.connection.cursor() as cur:
        cur.execute("SELECT 1")
    app_db.terminate_all()
    db.get_connection()
    bad = Database(app_db.settings.replace(password="not-the-" + app_db.password))
    with pytest.raises(lambda_db.AuthenticationError) as info:
        bad.get_connection()
    texts = [caplog.text, str(info.value), repr(info.value), repr(db), repr(db.settings)]
    texts.append(str(info.value.__cause__))
    for text in texts:
        assert app_db.password not in text
    assert "password=" not in caplog.text
    db.close()


# -- stacking with Powertools ------------------------------------------------------------


@pytest.fixture
def powertools(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, Any]]:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "items")
    from aws_lambda_powertools import Logger, Metrics, Tracer

    metrics = Metrics(namespace="LambdaDbTests")
    yield Logger(service="items", stream=io.StringIO()), Tracer(service="items"), metrics
    metrics.clear_metrics()


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(decorators: list[Decorator], func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_stacks_with_powertools_in_any_order(
    env_db: AppDb,
    powertools: tuple[Any, Any, Any],
    position: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger, tracer, metrics = powertools

    def body(event: dict[str, str], context: Any) -> dict[str, str]:
        insert(event["id"])
        metrics.add_metric(name="ItemsCreated", unit="Count", value=1)
        logger.info("created", extra={"item": event["id"]})
        return {"id": event["id"]}

    decorators: list[Decorator] = [
        logger.inject_lambda_context,
        tracer.capture_lambda_handler,
        metrics.log_metrics,
    ]
    decorators.insert(position, with_connection)
    handler = _stack(decorators, body)
    assert handler({"id": f"p{position}"}, LambdaContext()) == {"id": f"p{position}"}
    assert env_db.query("SELECT id FROM items") == [(f"p{position}",)]
    logged = [json.loads(line) for line in logger.registered_handler.stream.getvalue().splitlines()]
    assert [line["function_request_id"] for line in logged if line["message"] == "created"]
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any("ItemsCreated" in line for line in emitted)  # Metrics flushed


def test_decorator_with_options_and_explicit_database(app_db: AppDb) -> None:
    db = Database(app_db.settings)

    @with_connection(database=db, inject="conn")
    def handler(event: object, context: object, conn: Any) -> Any:
        assert conn is db.get_connection()
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            row = cur.fetchone()
            assert row is not None
            return row[0]

    assert handler({}, LambdaContext()) == app_db.role
    assert handler.__name__ == "handler"
    db.close()


# -- SnapStart -------------------------------------------------------------------------


def test_snapstart_hooks_close_before_snapshot_and_refresh_after_restore(
    app_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: dict[str, list[Callable[[], None]]] = {"before": [], "after": []}
    fake = types.ModuleType("snapshot_restore_py")
    fake.register_before_snapshot = hooks["before"].append  # type: ignore[attr-defined]
    fake.register_after_restore = hooks["after"].append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    _snapstart.reset()
    monkeypatch.setattr(_snapstart, "_registered", False)

    db = Database(app_db.settings)
    assert len(hooks["before"]) == 1
    assert len(hooks["after"]) == 1
    Database(app_db.settings)  # registered once, not per instance
    assert len(hooks["before"]) == 1

    invalidated: list[bool] = []
    monkeypatch.setattr(db.provider, "invalidate", lambda: invalidated.append(True))
    first = db.get_connection()  # e.g. opened during init, before the snapshot
    hooks["before"][0]()
    assert first.closed
    assert app_db.backends() == []
    hooks["after"][0]()
    assert invalidated == [True]
    assert db.get_connection() is not first
    db.close()
    _snapstart.reset()


def test_threads_inside_a_handler_share_the_invocations_connection(env_db: AppDb) -> None:
    from concurrent.futures import ThreadPoolExecutor

    @with_connection
    def handler(event: object, context: object) -> list[bool]:
        mine = lambda_db.get_connection()
        with ThreadPoolExecutor(max_workers=4) as pool:  # would deadlock if the lock were held
            return list(pool.map(lambda _: lambda_db.get_connection() is mine, range(8)))

    assert handler({}, LambdaContext()) == [True] * 8


def test_autocommit_left_on_by_a_caller_does_not_escape_the_transaction(env_db: AppDb) -> None:
    lambda_db.get_connection().autocommit = True  # e.g. a migration script at init

    @with_connection
    def handler(event: object, context: object) -> None:
        insert("x")
        raise RuntimeError("after the insert")

    with pytest.raises(RuntimeError):
        handler({}, LambdaContext())
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]


# -- the guard rails leave ordinary driver use alone ----------------------------------------


def test_threads_can_run_statements_on_the_invocations_connection(env_db: AppDb) -> None:
    from concurrent.futures import ThreadPoolExecutor

    @with_connection
    def handler(event: object, context: object) -> list[int]:
        def query(n: int) -> int:
            with lambda_db.get_connection().cursor() as cur:
                cur.execute("SELECT %s::int", (n,))
                row = cur.fetchone()
                assert row is not None
                return int(row[0])

        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(query, range(16)))

    assert handler({}, LambdaContext(timeout=5)) == list(range(16))


def test_copy_works_inside_a_real_invocation(env_db: AppDb, dbapi: Kit) -> None:
    @with_connection
    def handler(event: object, context: object) -> None:
        with lambda_db.get_connection().cursor() as cur:
            dbapi.copy_in(cur, "COPY items (id, n) FROM STDIN", "a\t1\nb\t2\n")

    handler({}, LambdaContext(timeout=5))
    assert env_db.query("SELECT id, n FROM items ORDER BY id") == [("a", 1), ("b", 2)]


def test_isolation_level_and_readonly_apply_to_that_transaction_only(env_db: AppDb) -> None:
    def show(conn: Any) -> tuple[str, str]:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('transaction_isolation'),"
                        " current_setting('transaction_read_only')")  # fmt: skip
            row = cur.fetchone()
            assert row is not None
            return str(row[0]), str(row[1])

    @with_connection(inject="conn", isolation_level="SERIALIZABLE", readonly=True)
    def strict(event: object, context: object, conn: Any) -> tuple[str, str]:
        return show(conn)

    @with_connection(inject="conn")
    def plain(event: object, context: object, conn: Any) -> tuple[str, str]:
        return show(conn)

    assert strict({}, LambdaContext()) == ("serializable", "on")
    assert plain({}, LambdaContext()) == ("read committed", "off")
    assert lambda_db.default_database().stats.connects == 1


def test_kernel_bounds_a_dead_peer_outside_invocations(env_db: AppDb) -> None:
    """Outside a scope there is no deadline to enforce: keepalives and TCP_USER_TIMEOUT
    (set once, at connect: no per-invocation system call) end waits on a dead peer."""
    import socket

    conn = lambda_db.get_connection()
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    finally:
        sock.close()


@pytest.mark.pins("the opt-in DB_LOCAL_STATEMENT_TIMEOUT sends SET LOCAL by design")
def test_opt_in_statement_timeout_counts_from_after_the_wait_for_a_slot(
    local_timeout: AppDb,
) -> None:
    local_timeout.query(f"ALTER ROLE {local_timeout.role} CONNECTION LIMIT 1")
    blocker = local_timeout.connect()
    threading.Timer(1.5, blocker.close).start()

    @with_connection(inject="conn")
    def handler(event: object, context: object, conn: Any) -> int:
        with conn.cursor() as cur:
            # pg_settings gives milliseconds as a number (SHOW says "3s" for 3000 ms).
            cur.execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    # 6 s function, 1 s margin: 5 s if counted before connecting; at most 3.5 s after.
    assert handler({}, LambdaContext(timeout=6)) <= 3500


def test_a_lost_connection_error_from_elsewhere_still_rolls_this_one_back(env_db: AppDb) -> None:
    @with_connection
    def handler(event: object, context: object) -> None:
        insert("other-db-failed")
        raise lambda_db.ConnectionLostError("another database's connection was lost")

    with pytest.raises(lambda_db.ConnectionLostError, match="another database"):
        handler({}, LambdaContext())
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    assert env_db.backends("idle in transaction") == []
    assert lambda_db.default_database().stats.connections_lost == 0
