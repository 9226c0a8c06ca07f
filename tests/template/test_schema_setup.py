"""The schema setup's application role, on the real server: what it may do (DML on its own
table), what it may not (DDL, temporary tables, owning anything), the session defaults it
gets from the server, and that the functions work when they log in as it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from tests.conftest import AppDb
from tests.support.pinlog import PinLog
from tests.template.conftest import AppRole, CloudFormation, Run, load_event

#: The property values in events/schema-*.json.
EVENT_DEFAULTS = {"statement_timeout": "5s", "lock_timeout": "2s"}


def connect_as(app_db: AppDb, role: AppRole, **extra: Any) -> Any:
    """A plain psycopg2 connection as the application role."""
    return psycopg2.connect(
        **app_db.pg.connect_kwargs(
            user=role.name, password=role.password, dbname=app_db.name, **extra
        )
    )


def create_event(**properties: Any) -> dict[str, Any]:
    event = load_event("schema-create.json")
    event["ResourceProperties"] = {**event["ResourceProperties"], **properties}
    return event


@pytest.fixture
def app_conn(schema: None, app_db: AppDb, app_role: AppRole) -> Iterator[Any]:
    """A connection as the application role, after the first deploy's schema setup."""
    conn = connect_as(app_db, app_role)
    try:
        yield conn
    finally:
        conn.close()


def test_app_role_reads_and_writes_its_table(app_conn: Any) -> None:
    with app_conn.cursor() as cur:
        cur.execute("INSERT INTO items (name, quantity) VALUES ('a', 1) RETURNING id")
        (item_id,) = cur.fetchone()
        cur.execute("UPDATE items SET quantity = 2 WHERE id = %s", (item_id,))
        cur.execute("SELECT name, quantity FROM items WHERE id = %s", (item_id,))
        assert cur.fetchone() == ("a", 2)
        cur.execute("DELETE FROM items WHERE id = %s", (item_id,))
        assert cur.rowcount == 1
    app_conn.commit()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE other (x int)",
        "DROP TABLE items",
        "ALTER TABLE items ADD COLUMN extra int",
        "TRUNCATE items",
        "CREATE INDEX ON items (name)",
        pytest.param(  # would pin RDS Proxy sessions; the attempt reaches the log
            "CREATE TEMPORARY TABLE scratch (x int)",
            marks=pytest.mark.pins("tries CREATE TEMPORARY TABLE, which is refused"),
        ),
        "CREATE VIEW everything AS SELECT * FROM items",
        "CREATE SCHEMA elsewhere",
        "CREATE ROLE someone",
    ],
)
def test_app_role_has_no_ddl(app_conn: Any, statement: str) -> None:
    with app_conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
        cur.execute(statement)
    app_conn.rollback()


def test_app_role_owns_nothing_and_has_only_login(
    schema: None, app_db: AppDb, app_role: AppRole
) -> None:
    (attributes,) = app_db.query(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication"
        "  FROM pg_roles WHERE rolname = %s",
        (app_role.name,),
    )
    assert attributes == (True, False, False, False, False, False)
    (owned,) = app_db.query(
        "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", (app_role.name,)
    )
    assert owned == (0,)
    (privileges,) = app_db.query(
        "SELECT array_agg(privilege_type::text ORDER BY privilege_type)"
        "  FROM information_schema.role_table_grants"
        " WHERE grantee = %s AND table_name = 'items'",
        (app_role.name,),
    )
    assert privileges == (["DELETE", "INSERT", "SELECT", "UPDATE"],)


def test_app_role_gets_its_timeouts_from_the_server(app_conn: Any) -> None:
    with app_conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        assert cur.fetchone() == (
            EVENT_DEFAULTS["statement_timeout"],
            EVENT_DEFAULTS["lock_timeout"],
            "10s",
        )
        cur.execute(
            "SELECT source FROM pg_settings WHERE name IN"
            " ('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout')"
        )
        assert {source for (source,) in cur.fetchall()} == {"user"}  # role defaults
    app_conn.rollback()


def test_statement_timeout_cancels_a_long_statement(
    run: Run, app_db: AppDb, app_role: AppRole
) -> None:
    answer = run("schema-create.json", event=create_event(StatementTimeoutMs="200"))
    assert answer["Status"] == "SUCCESS", answer
    conn = connect_as(app_db, app_role)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(5)")
    finally:
        conn.close()


def test_an_update_changes_the_role_defaults(
    schema: None, run: Run, app_db: AppDb, app_role: AppRole
) -> None:
    event = load_event("schema-update.json")
    event["ResourceProperties"] = {**event["ResourceProperties"], "StatementTimeoutMs": "7000"}
    assert run("schema-update.json", event=event)["Status"] == "SUCCESS"
    (settings,) = app_db.query(
        "SELECT rolconfig FROM pg_roles WHERE rolname = %s", (app_role.name,)
    )
    assert "statement_timeout=7000" in settings[0]


def test_the_functions_work_as_their_roles(
    schema: None, run: Run, app_db: AppDb, app_role: AppRole, report_role: AppRole
) -> None:
    as_app = {"DB_USER": app_role.name, "DB_PASSWORD": app_role.password}
    created = run("items-create.json", environ=as_app)
    assert created["statusCode"] == 201, created
    listed = run("items-list.json", environ=as_app)
    assert listed["statusCode"] == 200, listed
    as_report = {"DB_USER": report_role.name, "DB_PASSWORD": report_role.password}
    report = run("connection-report.json", environ=as_report)
    assert "limits" in report, report
    (count,) = app_db.query("SELECT count(*) FROM items")
    assert count == (1,)


def test_both_roles_log_in_with_iam_where_rds_iam_exists(
    rds_iam: None, run: Run, app_db: AppDb, app_role: AppRole, report_role: AppRole
) -> None:
    assert run("schema-create.json")["Status"] == "SUCCESS"
    for role in (app_role, report_role):
        (member,) = app_db.query("SELECT pg_has_role(%s, 'rds_iam', 'MEMBER')", (role.name,))
        assert member == (True,)
    # The next deploy reuses them: rds_iam is one of the migration's own grants.
    update = run("schema-update.json")
    assert update["Status"] == "SUCCESS", update


def test_a_powerful_existing_role_is_refused(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation
) -> None:
    app_db.pg.execute(f'CREATE ROLE "{app_role.name}" LOGIN CREATEDB')
    answer = run("schema-create.json")
    assert answer["Status"] == "FAILED"
    assert "more than LOGIN" in answer["Reason"]
    assert cloudformation.last()["Status"] == "FAILED"
    assert app_db.query("SELECT to_regclass('items') IS NULL") == [(True,)]  # rolled back


@pytest.mark.parametrize(
    ("properties", "words"),
    [
        ({"AppUser": 'x"; DROP TABLE items; --'}, "AppUser must be a role name"),
        ({"AppUser": ""}, "AppUser must be a role name"),
        ({"ReportUser": "Report-Role"}, "ReportUser must be a role name"),
        ({"ReportUser": None}, "ReportUser must be a role name"),
        ({"ReportUser": "same", "AppUser": "same"}, "AppUser and ReportUser must differ"),
        ({"StatementTimeoutMs": "0"}, "StatementTimeoutMs must be between"),
        ({"LockTimeoutMs": "soon"}, "LockTimeoutMs must be a whole number"),
        ({"IdleInTransactionTimeoutMs": "99999999999"}, "IdleInTransactionTimeoutMs must be"),
    ],
)
def test_bad_properties_fail_with_the_property_named(
    run: Run, app_db: AppDb, properties: dict[str, Any], words: str
) -> None:
    answer = run("schema-create.json", event=create_event(**properties))
    assert answer["Status"] == "FAILED"
    assert "PropertyError" in answer["Reason"]
    assert words in answer["Reason"]
    assert app_db.query("SELECT to_regclass('items') IS NULL") == [(True,)]


def test_the_local_password_never_reaches_the_server_in_clear(
    run: Run, app_db: AppDb, app_role: AppRole, pinlog: PinLog
) -> None:
    with pinlog.capture() as block:  # the suite's server logs every statement
        assert run("schema-create.json")["Status"] == "SUCCESS"
    sent = "\n".join(block.statements(app_db.role))
    assert f'ALTER ROLE "{app_role.name}" PASSWORD \'SCRAM-SHA-256$' in sent
    assert app_role.password not in sent
    assert app_role.password not in app_db.pg.statement_log_path.read_text(errors="replace")


def test_the_schema_setup_creates_the_idempotency_table_for_the_app_role(
    app_conn: Any, app_db: AppDb, app_role: AppRole
) -> None:
    (owner, privileges) = app_db.query(
        "SELECT tableowner, (SELECT array_agg(privilege_type::text ORDER BY privilege_type)"
        "  FROM information_schema.role_table_grants"
        " WHERE grantee = %s AND table_name = 'lambda_db_idempotency')"
        "  FROM pg_tables WHERE tablename = 'lambda_db_idempotency'",
        (app_role.name,),
    )[0]
    assert owner == app_db.role  # the master user's, not the application role's
    assert privileges == ["DELETE", "INSERT", "SELECT", "UPDATE"]
    with app_conn.cursor() as cur:  # what lambda_db.idempotent sends, as the app role
        cur.execute(
            "INSERT INTO lambda_db_idempotency (key, expires_at) VALUES ('k', now())"
            " ON CONFLICT (key) DO UPDATE SET result = '1' RETURNING 1"
        )
        cur.execute("DELETE FROM lambda_db_idempotency WHERE expires_at <= now()")
    app_conn.rollback()
