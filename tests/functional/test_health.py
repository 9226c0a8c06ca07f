"""Health checks on a real connection: cheapest first, a ping only when in doubt."""

from __future__ import annotations

import logging

import pytest

import lambda_db
from lambda_db import Database
from lambda_db._checks import acquire
from lambda_db._deadline import Deadline
from lambda_db.database import TRACE_ID
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb, FakeClock


def make_db(app_db: AppDb, clock: FakeClock, **changes: object) -> Database:
    return Database(app_db.settings.replace(**changes), clock=clock)


def test_warm_gets_reuse_one_connection_without_pinging(app_db: AppDb, clock: FakeClock) -> None:
    db = make_db(app_db, clock)
    first = db.get_connection()
    for _ in range(50):
        clock.advance(1.0)
        assert db.get_connection() is first
    assert db.stats.connects == 1
    assert db.stats.reuses == 50
    assert db.stats.pings == 0
    assert len(app_db.backends()) == 1
    db.close()


def test_idle_ping_triggers_exactly_at_the_threshold(app_db: AppDb, clock: FakeClock) -> None:
    db = make_db(app_db, clock, idle_ping_after=60.0)
    conn = db.get_connection()
    clock.advance(59.999)
    db.get_connection()
    assert db.stats.pings == 0
    clock.advance(59.999)  # idle counts from the last use, not from the connect
    db.get_connection()
    assert db.stats.pings == 0
    clock.advance(60.0)
    assert db.get_connection() is conn
    assert db.stats.pings == 1
    assert db.stats.connects == 1
    # The ping ran in autocommit: nothing is left open.
    assert conn.info.transaction_status == 0
    assert conn.autocommit is False
    db.close()


def test_max_age_recycles_exactly_at_the_limit(app_db: AppDb, clock: FakeClock) -> None:
    db = make_db(app_db, clock, max_age=300.0, idle_ping_after=1e9)
    first = db.get_connection()
    clock.advance(299.999)
    assert db.get_connection() is first
    clock.advance(0.001)
    second = db.get_connection()
    assert second is not first
    assert first.closed
    assert (db.stats.connects, db.stats.health_check_failures) == (2, 1)
    assert len(app_db.backends()) == 1  # the old one really left the server
    db.close()


def test_max_age_zero_never_recycles(app_db: AppDb, clock: FakeClock) -> None:
    db = make_db(app_db, clock, max_age=0.0, idle_ping_after=1e9)
    first = db.get_connection()
    clock.advance(10 * 24 * 3600)
    assert db.get_connection() is first
    db.close()


def test_killed_backend_found_by_the_socket_poll_without_a_sleep(app_db: AppDb) -> None:
    sleeps: list[float] = []
    db = Database(app_db.settings, sleep=sleeps.append)
    first = db.get_connection()
    old_pid = first.info.backend_pid
    assert app_db.terminate_all() == 1
    second = db.get_connection()
    assert second is not first
    assert second.info.backend_pid != old_pid
    assert db.stats.health_check_failures == 1
    assert sleeps == []  # replacing our own dead connection never backs off
    with second.cursor() as cur:
        cur.execute("SELECT 1")
    db.close()


def test_closed_connection_is_replaced(app_db: AppDb) -> None:
    db = Database(app_db.settings)
    first = db.get_connection()
    first.close()
    assert db.get_connection() is not first
    assert db.stats.health_check_failures == 1
    db.close()


def test_leftover_of_an_earlier_invocation_is_rolled_back_with_a_warning(
    app_db: AppDb, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_db.query(f"CREATE TABLE t (id int); GRANT ALL ON t TO {app_db.role}")
    db = Database(app_db.settings)
    monkeypatch.setenv(TRACE_ID, "Root=1-00000001-aaaaaaaaaaaaaaaaaaaaaaaa")
    conn = db.get_connection()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")  # no commit: this invocation forgot
    monkeypatch.setenv(TRACE_ID, "Root=1-00000002-bbbbbbbbbbbbbbbbbbbbbbbb")  # the next one
    with caplog.at_level(logging.WARNING, logger="lambda_db"):
        assert db.get_connection() is conn
    assert "rolling back a transaction an earlier invocation left open" in caplog.text
    assert db.stats.leftover_rollbacks == 1
    assert app_db.query("SELECT count(*) FROM t") == [(0,)]
    assert app_db.backends("idle in transaction") == []
    db.close()


def test_calls_in_one_invocation_share_its_transaction(
    app_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside @with_connection, calling get_connection() twice loses nothing (0.1's trap)."""
    app_db.query(f"CREATE TABLE t (id int); GRANT ALL ON t TO {app_db.role}")
    db = Database(app_db.settings)
    monkeypatch.setenv(TRACE_ID, "Root=1-00000001-aaaaaaaaaaaaaaaaaaaaaaaa")
    with db.get_connection().cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    with db.get_connection().cursor() as cur:  # a helper deeper in the same handler
        cur.execute("INSERT INTO t VALUES (2)")
    db.get_connection().commit()
    assert app_db.query("SELECT count(*) FROM t") == [(2,)]
    assert db.stats.leftover_rollbacks == 0
    db.close()


def test_outside_lambda_the_process_is_one_invocation(
    app_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRACE_ID, raising=False)
    app_db.query(f"CREATE TABLE t (id int); GRANT ALL ON t TO {app_db.role}")
    db = Database(app_db.settings)
    with db.get_connection().cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    conn = db.get_connection()  # a script's second call: its transaction is its own
    assert conn.info.transaction_status == 2  # still in the transaction
    conn.commit()
    assert app_db.query("SELECT count(*) FROM t") == [(1,)]
    assert db.stats.leftover_rollbacks == 0
    db.close()


def test_a_scope_always_starts_clean(app_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction left open outside any scope (at init, say) never leaks into one."""
    monkeypatch.delenv(TRACE_ID, raising=False)
    app_db.query(f"CREATE TABLE t (id int); GRANT ALL ON t TO {app_db.role}")
    db = Database(app_db.settings)
    with db.get_connection().cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    with db.invocation(LambdaContext()), db.get_connection().cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (0,)
    assert db.stats.leftover_rollbacks == 1
    db.close()


def test_server_restart_between_gets(app_db: AppDb) -> None:
    db = Database(app_db.settings)
    first = db.get_connection()
    app_db.pg.restart()
    second = db.get_connection()
    assert second is not first
    with second.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    db.close()


def test_configuration_error_at_first_use_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DB_NAME", "app")
    monkeypatch.setenv("DB_USER", "app")
    monkeypatch.setenv("DB_PASSWORD", "pw")

    @lambda_db.with_connection  # decorating reads nothing
    def handler(event: dict[str, bool], context: object) -> str:
        if event.get("use"):
            lambda_db.get_connection()
        return "no database needed"

    assert handler({}, None) == "no database needed"  # an invocation that never uses it
    with pytest.raises(lambda_db.ConfigurationError) as info:
        handler({"use": True}, None)
    assert info.value.variable == "DB_HOST"
    assert "DB_HOST" in str(info.value)


def test_unknown_database_is_not_retried(app_db: AppDb) -> None:
    sleeps: list[float] = []
    db = Database(app_db.settings.replace(dbname="no_such_db"), sleep=sleeps.append)
    with pytest.raises(lambda_db.ConfigurationError) as info:
        db.get_connection()
    assert info.value.variable == "DB_NAME"
    assert sleeps == []


def test_wrong_password_is_not_retried_in_password_mode(app_db: AppDb) -> None:
    sleeps: list[float] = []
    db = Database(app_db.settings.replace(password="wrong-pw-123"), sleep=sleeps.append)
    with pytest.raises(lambda_db.AuthenticationError) as info:
        db.get_connection()
    assert "DB_PASSWORD" in str(info.value)
    assert "wrong-pw-123" not in str(info.value)
    assert sleeps == []


class MetricsSink:
    """Records what Powertools ``Metrics.add_metric`` would receive."""

    def __init__(self) -> None:
        self.metrics: list[tuple[str, str, float]] = []

    def add_metric(self, name: str, unit: object, value: float) -> None:
        self.metrics.append((name, str(unit), value))


def test_metrics_sink_receives_lifecycle_counters(app_db: AppDb) -> None:
    sink = MetricsSink()
    db = Database(app_db.settings, metrics=sink)
    db.get_connection()
    app_db.terminate_all()
    db.get_connection()
    names = [name for name, _, _ in sink.metrics]
    assert names == ["Connects", "HealthCheckFailures", "Connects"]
    assert all(unit == "Count" for _, unit, _ in sink.metrics)
    db.close()


def test_no_budget_left_skips_the_ping_and_keeps_the_connection(
    app_db: AppDb, clock: FakeClock
) -> None:
    db = make_db(app_db, clock, idle_ping_after=60.0)
    conn = db.get_connection()
    clock.advance(120.0)
    spent = Deadline(clock=clock, started=clock(), end=clock(), margin=0.0, connect_budget=0.0)
    assert acquire(db, spent, fresh=True) is conn  # no time to ping: not thrown away
    assert (db.stats.pings, db.stats.health_check_failures) == (0, 0)
    db.close()


def test_lambda_without_a_trace_id_is_warned_about_once(
    app_db: AppDb, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """awslambdaric deletes the trace id when the runtime sends none: outside a scope the
    boundary then cannot be seen, and lambda-db says so (once)."""
    monkeypatch.delenv(TRACE_ID, raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    db = Database(app_db.settings)
    with caplog.at_level(logging.WARNING, logger="lambda_db"):
        db.get_connection()
        db.get_connection()
    warnings = [r for r in caplog.records if TRACE_ID in r.getMessage()]
    assert len(warnings) == 1
    assert "use @with_connection" in warnings[0].getMessage()
    db.close()
