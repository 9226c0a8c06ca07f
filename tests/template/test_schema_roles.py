"""The schema setup's roles on the real server, beyond the table privileges
(test_schema_setup.py): an existing role is reused only when it is no more than the
migration makes it, and the report role sees every role's sessions without reading data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from tests.conftest import AppDb
from tests.template.conftest import AppRole, CloudFormation, Run
from tests.template.test_schema_setup import connect_as


def assert_refused(
    answer: dict[str, Any], cloudformation: CloudFormation, app_db: AppDb, *words: str
) -> None:
    """The migration answered FAILED with ``words`` in its reason, and created nothing."""
    assert answer["Status"] == "FAILED", answer
    assert cloudformation.last()["Status"] == "FAILED"
    assert "PermissionError" in answer["Reason"]
    for word in words:
        assert word in answer["Reason"], answer["Reason"]
    assert app_db.query("SELECT to_regclass('items') IS NULL") == [(True,)]  # rolled back


# ---------------------------------------------------------------- roles that are more


def test_a_role_that_is_a_member_of_the_master_user_is_refused(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation
) -> None:
    """The reviewer's case: CREATE ROLE evil_app LOGIN; GRANT app_admin TO evil_app."""
    app_db.pg.execute(f"CREATE ROLE \"{app_role.name}\" LOGIN PASSWORD '{app_role.password}'")
    app_db.pg.execute(f'GRANT "{app_db.role}" TO "{app_role.name}"')
    answer = run("schema-create.json")
    assert_refused(
        answer, cloudformation, app_db, f"membership in {app_db.role}", f"REVOKE {app_db.role}"
    )
    # What it would have allowed: the migration's table, dropped by the "application" role.
    app_db.query("CREATE TABLE items (id int)")
    app_db.query(f'ALTER TABLE items OWNER TO "{app_db.role}"')
    conn = connect_as(app_db, app_role)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE items")  # an inherited owner's right
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("other", ["pg_monitor", "pg_read_all_data", "pg_write_all_data"])
def test_an_app_role_with_any_other_membership_is_refused(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation, other: str
) -> None:
    app_db.pg.execute(f'CREATE ROLE "{app_role.name}" LOGIN IN ROLE {other}')
    assert_refused(run("schema-create.json"), cloudformation, app_db, f"membership in {other}")


def test_a_role_that_owns_an_object_is_refused(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation
) -> None:
    app_db.pg.execute(f'CREATE ROLE "{app_role.name}" LOGIN')
    app_db.query(f'CREATE SCHEMA sneaky AUTHORIZATION "{app_role.name}"')
    assert_refused(
        run("schema-create.json"), cloudformation, app_db, "1 object(s) it owns", "REASSIGN OWNED"
    )


def test_a_role_that_owns_an_object_in_another_database_is_refused(
    run: Run, app_db: AppDb, report_role: AppRole, cloudformation: CloudFormation
) -> None:
    elsewhere = f"{app_db.name}_other"
    app_db.pg.execute(f'CREATE ROLE "{report_role.name}" LOGIN')
    app_db.pg.execute(f'CREATE DATABASE "{elsewhere}" OWNER "{report_role.name}"')
    try:
        assert_refused(
            run("schema-create.json"), cloudformation, app_db, report_role.name, "it owns"
        )
    finally:
        app_db.pg.execute(f'DROP DATABASE "{elsewhere}"')


def test_a_role_with_privileges_on_other_tables_is_refused(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation
) -> None:
    app_db.pg.execute(f'CREATE ROLE "{app_role.name}" LOGIN')
    app_db.query("CREATE TABLE payroll (salary int)")
    app_db.query(f'GRANT SELECT, UPDATE ON payroll TO "{app_role.name}"')
    assert_refused(run("schema-create.json"), cloudformation, app_db, "privileges on table payroll")


@pytest.fixture
def deployed(schema: None, app_db: AppDb, app_role: AppRole, report_role: AppRole) -> None:
    """The first deploy ran: both roles exist with the migration's own grants."""


@pytest.mark.usefixtures("deployed")
def test_a_later_grant_fails_the_next_deploy(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation
) -> None:
    app_db.query(f'GRANT "{app_db.role}" TO "{app_role.name}"')
    answer = run("schema-update.json")
    assert answer["Status"] == "FAILED"
    assert f"membership in {app_db.role}" in answer["Reason"]


@pytest.mark.usefixtures("deployed")
def test_the_migrations_own_grants_are_reused(
    run: Run, app_db: AppDb, app_role: AppRole, report_role: AppRole
) -> None:
    for _ in range(2):
        answer = run("schema-update.json")
        assert answer["Status"] == "SUCCESS", answer
    members = dict(
        app_db.query(
            "SELECT r.rolname, ARRAY(SELECT g.rolname::text FROM pg_auth_members m"
            "  JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid)"
            "  FROM pg_roles r WHERE r.rolname IN (%s, %s)",
            (app_role.name, report_role.name),
        )
    )
    assert members == {app_role.name: [], report_role.name: ["pg_monitor"]}


# ---------------------------------------------------------------- the report role


@pytest.fixture
def report_conn(deployed: None, app_db: AppDb, report_role: AppRole) -> Iterator[Any]:
    conn = connect_as(app_db, report_role)
    try:
        yield conn
    finally:
        conn.close()


def test_report_role_reads_statistics_and_no_table(
    report_conn: Any, app_db: AppDb, report_role: AppRole
) -> None:
    (attributes,) = app_db.query(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication,"
        "       pg_has_role(oid, 'pg_read_all_stats', 'USAGE'), rolconfig"
        "  FROM pg_roles WHERE rolname = %s",
        (report_role.name,),
    )
    assert attributes[:7] == (True, False, False, False, False, False, True)
    assert "statement_timeout=5000" in attributes[7]  # the same role defaults
    with report_conn.cursor() as cur:
        for statement in ("SELECT count(*) FROM items", "SELECT * FROM lambda_db_idempotency"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            report_conn.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("CREATE TABLE mine (x int)")
    report_conn.rollback()


@pytest.mark.usefixtures("deployed")
def test_the_report_counts_another_roles_idle_transaction_only_as_the_report_role(
    run: Run, app_db: AppDb, app_role: AppRole, report_role: AppRole
) -> None:
    """The finding: as the application role (no pg_monitor), the report counted the
    master user's idle-in-transaction session as 0."""
    as_app = {"DB_USER": app_role.name, "DB_PASSWORD": app_role.password}
    as_report = {"DB_USER": report_role.name, "DB_PASSWORD": report_role.password}

    def counted() -> tuple[int, int]:
        """What the report counts, as the application role and as the report role."""
        app, report = (
            int(run("connection-report.json", environ=environ)["idle_in_transaction"])
            for environ in (as_app, as_report)
        )
        return app, report

    before = counted()
    stuck = app_db.connect(application_name="migration-left-open")
    try:
        with stuck.cursor() as cur:
            cur.execute("SELECT 1")  # and then idle in transaction
        after = counted()
    finally:
        stuck.close()
    assert after[0] == before[0]  # the application role cannot see it
    assert after[1] == before[1] + 1


def test_report_role_logs_in_with_its_own_password_only(
    deployed: None, app_db: AppDb, report_role: AppRole, app_role: AppRole
) -> None:
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            **app_db.pg.connect_kwargs(
                user=report_role.name, password=app_role.password, dbname=app_db.name
            )
        ).close()
