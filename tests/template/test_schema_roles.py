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
from tests.template.conftest import AppRole, CloudFormation, Run, load_event
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


def server_version(app_db: AppDb) -> int:
    """The server's ``server_version_num`` (160000 for PostgreSQL 16.0)."""
    ((version,),) = app_db.query("SHOW server_version_num")
    return int(version)


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
    # Not the master user itself: on PostgreSQL 16+ it is a member of the roles it
    # created, so granting it to one of them would be circular.
    app_db.query(f'GRANT pg_write_all_data TO "{app_role.name}"')
    answer = run("schema-update.json")
    assert answer["Status"] == "FAILED"
    assert "membership in pg_write_all_data" in answer["Reason"]


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


# ------------------------------------- privileges on the migration's own objects


def grants_of(app_db: AppDb, *roles: AppRole) -> list[tuple[Any, ...]]:
    """What a failed migration must leave as it was: the roles' defaults and memberships,
    and every access list in the database (this database's, the schemas', the relations'
    and their columns')."""
    return app_db.query(
        "SELECT r.rolname, r.rolconfig,"
        "       ARRAY(SELECT g.rolname::text FROM pg_auth_members m"
        "              JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1),"
        "       (SELECT datacl::text FROM pg_database WHERE datname = current_database()),"
        "       ARRAY(SELECT nspname || nspacl::text FROM pg_namespace"
        "              WHERE nspacl IS NOT NULL ORDER BY 1),"
        "       ARRAY(SELECT c.relname || coalesce(c.relacl::text, '')"
        "                    || coalesce(a.attname || a.attacl::text, '')"
        "               FROM pg_class c LEFT JOIN pg_attribute a"
        "                 ON a.attrelid = c.oid AND a.attacl IS NOT NULL"
        "              WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1)"
        "  FROM pg_roles r WHERE r.rolname = ANY(%s) ORDER BY 1",
        ([role.name for role in roles],),
    )


#: Each surplus privilege on the objects the migration grants on: who holds it (the
#: application or the report role), whether the tables must exist first (the first deploy
#: ran), the statements that grant it, and how the refusal names it. ``{db}`` is this
#: database, ``{role}`` the role, ``{master}`` the master user (the grantor of what a
#: superuser grants on the objects it owns) and ``{schema_owner}`` public's owner.
SURPLUS = [
    pytest.param("app", False, ['GRANT CREATE ON DATABASE "{db}" TO "{role}"'],
                 "CREATE (granted by {master}) on database {db}", id="database-create"),
    pytest.param("app", False, ['GRANT TEMPORARY ON DATABASE "{db}" TO "{role}"'],
                 "TEMPORARY (granted by {master}) on database {db}", id="database-temporary"),
    pytest.param("app", False, ['GRANT CREATE ON SCHEMA public TO "{role}"'],
                 "CREATE (granted by {schema_owner}) on schema public", id="schema-create"),
    pytest.param("app", True, ['GRANT SELECT ON items TO "{role}" WITH GRANT OPTION'],
                 "SELECT WITH GRANT OPTION (granted by {master}) on table items",
                 id="table-grant-option"),
    pytest.param("app", False, ['GRANT USAGE ON SCHEMA public TO "{role}" WITH GRANT OPTION'],
                 "USAGE WITH GRANT OPTION (granted by {schema_owner}) on schema public",
                 id="schema-grant-option"),
    pytest.param("app", False, ['GRANT CONNECT ON DATABASE "{db}" TO "{role}" WITH GRANT OPTION'],
                 "CONNECT WITH GRANT OPTION (granted by {master}) on database {db}",
                 id="database-grant-option"),
    pytest.param("app", True,
                 ['GRANT UPDATE (quantity) ON items TO "{role}" WITH GRANT OPTION'],
                 "UPDATE WITH GRANT OPTION (granted by {master}) on column quantity of table items",
                 id="column-grant-option"),
    pytest.param("app", True, ['GRANT TRUNCATE ON lambda_db_idempotency TO "{role}"'],
                 "TRUNCATE (granted by {master}) on table lambda_db_idempotency",
                 id="table-truncate"),
    pytest.param("app", True, ['GRANT REFERENCES (id) ON items TO "{role}"'],
                 "REFERENCES (granted by {master}) on column id of table items",
                 id="column-references"),
    pytest.param("report", True, ['GRANT SELECT ON items TO "{role}"'],
                 "SELECT (granted by {master}) on table items", id="report-select"),
    pytest.param("report", False, ['GRANT TEMPORARY ON DATABASE "{db}" TO "{role}"'],
                 "TEMPORARY (granted by {master}) on database {db}", id="report-temporary"),
    pytest.param("report", False, ['GRANT USAGE ON SCHEMA public TO "{role}"'],
                 "USAGE (granted by {schema_owner}) on schema public", id="report-schema-usage"),
    pytest.param(  # the review's example, all at once, on a deployed application role
        "app", True,
        ['GRANT CREATE, TEMPORARY ON DATABASE "{db}" TO "{role}"',
         'GRANT CREATE ON SCHEMA public TO "{role}"',
         'GRANT SELECT ON items TO "{role}" WITH GRANT OPTION'],
        "CREATE (granted by {master}), TEMPORARY (granted by {master}) on database {db};"
        " CREATE (granted by {schema_owner}) on schema public;"
        " SELECT WITH GRANT OPTION (granted by {master}) on table items",
        id="several",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("holder", "deployed_first", "statements", "named"), SURPLUS)
def test_a_surplus_privilege_on_the_migrations_objects_is_refused(
    run: Run,
    app_db: AppDb,
    app_role: AppRole,
    report_role: AppRole,
    cloudformation: CloudFormation,
    holder: str,
    deployed_first: bool,
    statements: list[str],
    named: str,
) -> None:
    role = app_role if holder == "app" else report_role
    if deployed_first:
        assert run("schema-create.json")["Status"] == "SUCCESS"
    else:
        app_db.pg.execute(f'CREATE ROLE "{role.name}" LOGIN')
    for statement in statements:
        app_db.query(statement.format(db=app_db.name, role=role.name))
    before = grants_of(app_db, app_role, report_role)
    update = load_event("schema-update.json")  # new role defaults, which must not apply
    update["ResourceProperties"]["StatementTimeoutMs"] = "6000"
    answer = run("schema-update.json", event=update)
    assert answer["Status"] == "FAILED", answer
    assert cloudformation.last()["Status"] == "FAILED"
    reason = answer["Reason"]
    assert "PermissionError" in reason
    assert f"role {role.name!r}" in reason
    ((schema_owner,),) = app_db.query(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
    )
    assert named.format(db=app_db.name, master=app_db.role, schema_owner=schema_owner) in reason
    assert "REVOKE" in reason and f"FROM {role.name}" in reason, reason  # how to take it away
    for secret in (app_role.password, report_role.password, app_db.password):
        assert secret not in reason
    assert grants_of(app_db, app_role, report_role) == before  # all rolled back
    if not deployed_first:
        assert app_db.query("SELECT to_regclass('items') IS NULL") == [(True,)]


@pytest.fixture
def grantor(app_db: AppDb) -> Iterator[str]:
    """A role other than the tables' owner that may grant on them: ``GRANT ... WITH
    GRANT OPTION`` to it, then ``SET ROLE`` to it to grant on."""
    name = f"{app_db.name}_grantor"
    app_db.pg.execute(f'CREATE ROLE "{name}" NOLOGIN')
    try:
        yield name
    finally:
        for table in ("items", "items_id_seq", "lambda_db_idempotency"):
            if app_db.query("SELECT to_regclass(%s)", (table,)) != [(None,)]:
                app_db.query(f'REVOKE ALL ON {table} FROM "{name}" CASCADE')
        app_db.query(f'REVOKE ALL ON DATABASE "{app_db.name}" FROM "{name}" CASCADE')
        app_db.pg.execute(f'DROP ROLE "{name}"')


def test_a_grant_option_from_another_grantor_is_refused(
    run: Run, app_db: AppDb, app_role: AppRole, cloudformation: CloudFormation, grantor: str
) -> None:
    """The migration's REVOKE ALL, run by the tables' owner, takes away only the owner's
    grants: one made by another holder of the grant option would outlive it."""
    assert run("schema-create.json")["Status"] == "SUCCESS"
    app_db.query(f'GRANT UPDATE (quantity) ON items TO "{grantor}" WITH GRANT OPTION')
    app_db.query(
        f'SET ROLE "{grantor}";'
        f' GRANT UPDATE (quantity) ON items TO "{app_role.name}" WITH GRANT OPTION'
    )
    answer = run("schema-update.json")
    assert answer["Status"] == "FAILED", answer
    assert (
        f"UPDATE WITH GRANT OPTION (granted by {grantor}) on column quantity of table items"
        in answer["Reason"]
    )
    assert cloudformation.last()["Status"] == "FAILED"


def test_a_privilege_two_roles_granted_is_named_once_with_both_grantors(
    run: Run, app_db: AppDb, app_role: AppRole, report_role: AppRole, grantor: str
) -> None:
    assert run("schema-create.json")["Status"] == "SUCCESS"
    app_db.query(f'GRANT TRUNCATE ON items TO "{grantor}" WITH GRANT OPTION')
    app_db.query(f'GRANT TRUNCATE ON items TO "{app_role.name}"')  # as the owner
    app_db.query(f'SET ROLE "{grantor}"; GRANT TRUNCATE ON items TO "{app_role.name}"')
    before = grants_of(app_db, app_role, report_role)
    answer = run("schema-update.json")
    assert answer["Status"] == "FAILED", answer
    reason = answer["Reason"]
    by = ", ".join(sorted((app_db.role, grantor)))
    assert f"TRUNCATE (granted by {by}) on table items" in reason, reason
    assert reason.count("TRUNCATE") == 1, reason
    assert grants_of(app_db, app_role, report_role) == before


@pytest.mark.parametrize("on_rds", [False, True], ids=["postgres", "rds"])
def test_roles_with_exactly_the_allowed_privileges_are_reused(
    request: pytest.FixtureRequest,
    run: Run,
    app_db: AppDb,
    app_role: AppRole,
    report_role: AppRole,
    on_rds: bool,
) -> None:
    """Created by hand by the master user (as on RDS, where no one else may create roles;
    on PostgreSQL 16+ that gives it the ADMIN OPTION on them, which ALTER ROLE needs) with
    what the migration grants (the tables do not exist yet), then deployed twice: the
    second run finds the first run's grants and the column privileges added in between,
    all within what it allows."""
    if on_rds:
        request.getfixturevalue("rds_iam")
    member_of = " IN ROLE rds_iam" if on_rds else ""
    app, report = app_role.name, report_role.name
    as_master = f'SET ROLE "{app_db.role}"; '
    app_db.query(f'{as_master}CREATE ROLE "{app}" LOGIN{member_of}')
    app_db.query(f'{as_master}CREATE ROLE "{report}" LOGIN{member_of}')
    app_db.query(f'{as_master}GRANT CONNECT ON DATABASE "{app_db.name}" TO "{app}", "{report}"')
    app_db.query(f'{as_master}GRANT USAGE ON SCHEMA public TO "{app}"')
    app_db.query(f'{as_master}GRANT pg_monitor TO "{report}"')
    assert run("schema-create.json")["Status"] == "SUCCESS"
    app_db.query(f'GRANT SELECT (name), UPDATE (quantity) ON items TO "{app}"')
    for _ in range(2):
        answer = run("schema-update.json")
        assert answer["Status"] == "SUCCESS", answer


def test_a_role_the_master_user_may_not_alter_is_refused(
    run: Run,
    app_db: AppDb,
    app_role: AppRole,
    report_role: AppRole,
    cloudformation: CloudFormation,
) -> None:
    """PostgreSQL 16+: a role created by another role (a superuser here) may be altered by
    a CREATEROLE role only with the ADMIN OPTION on it; the reason says so. Before 16,
    CREATEROLE alone is enough and the role is reused."""
    app_db.pg.execute(f'CREATE ROLE "{report_role.name}" LOGIN')
    answer = run("schema-create.json")
    if server_version(app_db) < 160000:
        assert answer["Status"] == "SUCCESS", answer
        return
    assert_refused(
        answer,
        cloudformation,
        app_db,
        f"role {report_role.name!r} was created by another role",
        f"GRANT {report_role.name} TO {app_db.role} WITH ADMIN OPTION",
    )


# ------------------------------ privileges through PUBLIC or a membership


def effective(app_db: AppDb, role: str, function: str, obj: str, privilege: str) -> bool:
    """``has_<function>_privilege(role, obj, privilege)`` on the server."""
    ((held,),) = app_db.query(
        f"SELECT has_{function}_privilege(%s, %s, %s)", (role, obj, privilege)
    )
    return bool(held)


@pytest.mark.parametrize("on_rds", [False, True], ids=["postgres", "rds"])
def test_the_master_users_grants_to_shared_roles_are_revoked(
    request: pytest.FixtureRequest,
    run: Run,
    app_db: AppDb,
    app_role: AppRole,
    report_role: AppRole,
    on_rds: bool,
) -> None:
    """The review's case: default privileges give every new table to PUBLIC (and
    pg_monitor, rds_iam); the migration, which owns the tables, takes its own grants back
    on every deploy, so the report role reads no data and the application role gets no
    TRUNCATE, and the deploy succeeds."""
    shared = ["PUBLIC", "pg_monitor"]
    if on_rds:
        request.getfixturevalue("rds_iam")
        shared.append("rds_iam")
    default = f'ALTER DEFAULT PRIVILEGES FOR ROLE "{app_db.role}"'
    for to in shared:
        app_db.query(
            f"{default} GRANT SELECT, TRUNCATE ON TABLES TO {to};"
            f" {default} GRANT ALL ON SEQUENCES TO {to}"
        )
    try:
        check_shared_grants_revoked(run, app_db, app_role, report_role, shared)
    finally:  # rds_iam is dropped afterwards
        for to in shared:
            app_db.query(
                f"{default} REVOKE ALL ON TABLES FROM {to};"
                f" {default} REVOKE ALL ON SEQUENCES FROM {to}"
            )


def check_shared_grants_revoked(
    run: Run, app_db: AppDb, app_role: AppRole, report_role: AppRole, shared: list[str]
) -> None:
    assert run("schema-create.json")["Status"] == "SUCCESS"
    app_db.query(f"GRANT SELECT, TRUNCATE ON items TO {', '.join(shared)}")  # a later grant
    answer = run("schema-update.json")
    assert answer["Status"] == "SUCCESS", answer
    app, report = app_role.name, report_role.name
    for table in ("items", "lambda_db_idempotency"):
        assert not effective(app_db, report, "table", table, "SELECT")
        for privilege in ("TRUNCATE", "SELECT WITH GRANT OPTION"):
            assert not effective(app_db, app, "table", table, privilege)
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):  # what the API needs
            assert effective(app_db, app, "table", table, privilege)
    for role in (app, report):
        assert not effective(app_db, role, "sequence", "items_id_seq", "UPDATE")


def by_grantor(grant: str, to: str) -> list[str]:
    """``grant`` ("TRUNCATE ON items") to ``to``, as another role than the owner."""
    return [
        f'GRANT {grant} TO "{{grantor}}" WITH GRANT OPTION',
        f'SET ROLE "{{grantor}}"; GRANT {grant} TO {to}',
    ]


#: A privilege that reaches a role through PUBLIC or a role it is a member of, from a grant
#: the migration does not take away: whether the first deploy ran before (else the
#: refusal must roll the first one back), whether rds_iam exists, the statements (run as
#: the superuser; ``SET ROLE "{grantor}"`` grants as another role than the tables' owner),
#: and what the reason must say. ``{app}``, ``{report}``: the roles; ``{db}``: the database.

THROUGH = [
    pytest.param(True, False,
                 by_grantor("TRUNCATE ON items", "PUBLIC"),
                 ["role '{app}' has TRUNCATE on table items through PUBLIC",
                  "role '{report}' has TRUNCATE on table items through PUBLIC"],
                 id="table-truncate-public"),
    pytest.param(True, False,
                 by_grantor("SELECT ON items", "pg_monitor"),
                 ["role '{report}' has SELECT on table items through membership in pg_monitor"],
                 id="table-select-pg-monitor"),
    pytest.param(True, True,
                 by_grantor("DELETE ON items", "rds_iam"),
                 ["role '{report}' has DELETE on table items through membership in rds_iam"],
                 id="table-delete-rds-iam"),
    pytest.param(True, False,
                 by_grantor("REFERENCES (id) ON items", "PUBLIC"),
                 ["role '{app}' has REFERENCES on column id of table items through PUBLIC"],
                 id="column-references-public"),
    pytest.param(True, False,
                 by_grantor("UPDATE ON SEQUENCE items_id_seq", "PUBLIC"),
                 ["role '{app}' has UPDATE on sequence items_id_seq through PUBLIC"],
                 id="sequence-update-public"),
    pytest.param(True, False,
                 by_grantor('TEMPORARY ON DATABASE "{db}"', "PUBLIC"),
                 ["role '{app}' has TEMPORARY on database {db} through PUBLIC",
                  "role '{report}' has TEMPORARY on database {db} through PUBLIC"],
                 id="database-temporary-public"),
    pytest.param(False, False, ['GRANT CREATE ON DATABASE "{db}" TO PUBLIC'],
                 ["role '{app}' has CREATE on database {db} through PUBLIC"],
                 id="database-create-public-first-deploy"),
    pytest.param(False, False, ["GRANT CREATE ON SCHEMA public TO PUBLIC"],
                 ["role '{app}' has CREATE on schema public through PUBLIC",
                  "role '{report}' has CREATE on schema public through PUBLIC"],
                 id="schema-create-public-first-deploy"),
]  # fmt: skip


@pytest.mark.parametrize(("deployed_first", "on_rds", "statements", "named"), THROUGH)
def test_a_privilege_through_public_or_a_membership_fails_the_deploy(
    request: pytest.FixtureRequest,
    run: Run,
    app_db: AppDb,
    app_role: AppRole,
    report_role: AppRole,
    cloudformation: CloudFormation,
    deployed_first: bool,
    on_rds: bool,
    statements: list[str],
    named: list[str],
) -> None:
    if on_rds:
        request.getfixturevalue("rds_iam")  # before grantor: dropped after its grants
    grantor = request.getfixturevalue("grantor")
    names = {"app": app_role.name, "report": report_role.name, "db": app_db.name}
    if deployed_first:
        assert run("schema-create.json")["Status"] == "SUCCESS"
    for statement in statements:
        app_db.query(statement.format(grantor=grantor, **names))
    before = grants_of(app_db, app_role, report_role)
    answer = run("schema-update.json")
    assert answer["Status"] == "FAILED", answer
    assert cloudformation.last()["Status"] == "FAILED"
    reason = answer["Reason"]
    assert "PermissionError" in reason and "REVOKE" in reason, reason
    for words in named:
        assert words.format(**names) in reason, reason
    assert grants_of(app_db, app_role, report_role) == before  # all rolled back
    if not deployed_first:
        assert app_db.query("SELECT to_regclass('items') IS NULL") == [(True,)]
