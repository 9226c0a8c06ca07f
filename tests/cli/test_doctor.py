"""lambda-db doctor against the real server, configured like a function (DB_*) or --dsn."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2
import pytest

from tests.cli.conftest import Cli, Sessions
from tests.conftest import AppDb


def _idle_count(app_db: AppDb, application: str) -> int:
    rows = app_db.query(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE usename = %s AND application_name = %s AND state = 'idle'",
        (app_db.role, application),
    )
    return int(rows[0][0])


def test_counts_equal_pg_stat_activity(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    sessions(4, application_name="doctor-test-idle")
    result = cli("doctor", "--json", env=app_db)
    assert result.status == 0, result.stderr
    data = result.json()
    groups = [g for g in data["groups"] if g["application"] == "doctor-test-idle"]
    assert [(g["user"], g["state"], g["count"]) for g in groups] == [(app_db.role, "idle", 4)]
    assert groups[0]["count"] == _idle_count(app_db, "doctor-test-idle")
    # the doctor's own session is there too, named after the command
    assert any(g["application"] == "lambda-db doctor" for g in data["groups"])
    assert data["status"] == "ok"
    # The test role has no timeouts: the only warning (it does not change the status).
    assert data["warnings"] == [
        f'role "{app_db.role}" in database "{app_db.name}" runs with no statement_timeout '
        "(0, from the server) and no idle_in_transaction_session_timeout (0, from the server)"
    ]


def test_flags_a_role_at_80_percent(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    app_db.pg.execute(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 10')
    sessions(7)  # + the doctor's own session = 8 of 10
    result = cli("doctor", env=app_db)
    assert result.status == 1
    assert f'role "{app_db.role}" is at 80% of its connection limit (8 of 10' in result.stdout
    line = next(
        x for x in result.stdout.splitlines() if x.strip().startswith(f"role    {app_db.role}")
    )
    assert line.split()[-1] == "WARNING"
    assert "Recommendations" in result.stdout
    assert "RDS Proxy" in result.stdout


def test_below_the_threshold_exits_zero(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    app_db.pg.execute(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 10')
    sessions(6)  # 7 of 10
    assert cli("doctor", env=app_db).status == 0
    assert cli("doctor", "--threshold", "0.7", env=app_db).status == 1


def test_lists_stragglers_and_recommends_timeouts(
    cli: Cli, app_db: AppDb, sessions: Sessions
) -> None:
    idle, in_tx = sessions(2, application_name="straggler")
    with in_tx.cursor() as cur:
        cur.execute("SELECT 1")  # left idle in transaction
    time.sleep(0.3)
    data = cli("doctor", "--json", "--idle-age", "200ms", env=app_db).json()
    found = {s["pid"]: s["state"] for s in data["stragglers"] if s["application"] == "straggler"}
    assert found == {idle.info.backend_pid: "idle", in_tx.info.backend_pid: "idle in transaction"}
    advice = " ".join(data["recommendations"])
    assert "idle_in_transaction_session_timeout" in advice
    assert f"terminate-idle --user {app_db.role}" in advice


def test_dsn_is_never_echoed(cli: Cli, app_db: AppDb) -> None:
    dsn = (
        f"host={app_db['DB_HOST']} port={app_db['DB_PORT']} dbname={app_db.name} "
        f"user={app_db.role} password={app_db.password} sslmode=disable"
    )
    result = cli("doctor", "--dsn", dsn)
    assert result.status == 0, result.stderr
    assert app_db.password not in result.stdout + result.stderr
    assert f"{app_db.role}@{app_db['DB_HOST']}:{app_db['DB_PORT']}/{app_db.name}" in result.stdout


def test_unreachable_server_exits_2_without_the_password(cli: Cli, app_db: AppDb) -> None:
    env = {**app_db, "DB_PASSWORD": "wrong-pw-xyz", "DB_CONNECT_BUDGET": "1"}
    result = cli("doctor", env=env)
    assert result.status == 2
    assert result.stderr.startswith("lambda-db doctor: cannot connect")
    assert "wrong-pw-xyz" not in result.stderr
    assert app_db.password not in result.stderr


def test_a_full_role_is_told_to_use_another(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    app_db.pg.execute(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 2')
    sessions(2)
    result = cli("doctor", env={**app_db, "DB_CONNECT_BUDGET": "0.5"})
    assert result.status == 2
    assert "too many connections" in result.stderr
    assert "run it as another role" in result.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:S3cr%ZZet@127.0.0.1:5432/app",  # a bad percent-escape in the password
        "host=127.0.0.1 password=S3cr et dbname=app",  # libpq: missing "=" after "et"
    ],
)
def test_an_unparsable_dsn_is_not_quoted_back(cli: Cli, dsn: str) -> None:
    result = cli("doctor", "--dsn", dsn)
    assert result.status == 2
    assert "S3cr" not in result.stdout + result.stderr
    assert "not a valid libpq connection string" in result.stderr


@pytest.fixture
def api_role(app_db: AppDb) -> Iterator[dict[str, str]]:
    """A login role that owns nothing (an application's), as ``DB_*`` variables."""
    name = f"{app_db.name}_api"
    app_db.pg.create_role(name, "pw-api")
    app_db.query(f'GRANT CONNECT ON DATABASE "{app_db.name}" TO "{name}"')
    try:
        yield {**app_db, "DB_USER": name, "DB_PASSWORD": "pw-api"}
    finally:
        app_db.pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        app_db.query(f'DROP OWNED BY "{name}"')
        app_db.pg.execute(f'DROP ROLE "{name}"')


def test_a_role_without_timeouts_is_reported_with_the_fix(
    cli: Cli, api_role: dict[str, str]
) -> None:
    role = api_role["DB_USER"]
    result = cli("doctor", env=api_role)
    assert result.status == 0, result.stderr  # limits decide the status, not timeouts
    lines = result.stdout.splitlines()
    start = lines.index("Session timeouts of login roles (0: never; where each value comes from)")
    row = next(line for line in lines[start:] if line.strip().startswith(role))
    assert row.split()[-1] == "WARNING"
    assert "0 (server)" in row
    assert (
        f"ALTER ROLE \"{role}\" SET statement_timeout = '5s'; "
        f"ALTER ROLE \"{role}\" SET idle_in_transaction_session_timeout = '10s'"
    ) in result.stdout
    assert "without pinning RDS Proxy sessions" in result.stdout


def test_the_database_owner_is_not_told_to_take_a_5s_statement_timeout(
    cli: Cli, app_db: AppDb
) -> None:
    """The owner (the master user, which runs the migrations) is advised differently."""
    data = cli("doctor", "--json", env=app_db).json()
    assert any(w.startswith(f'role "{app_db.role}"') for w in data["warnings"])
    (advice,) = [a for a in data["recommendations"] if f'ALTER ROLE "{app_db.role}"' in a]
    assert f'owns database "{app_db.name}"' in advice
    assert f"ALTER ROLE \"{app_db.role}\" SET statement_timeout = '4min'" in advice
    assert f"ALTER ROLE \"{app_db.role}\" SET idle_in_transaction_session_timeout = '1min'" in (
        advice
    )
    assert "'5s'" not in " ".join(data["recommendations"])


def test_a_role_owning_tables_is_advised_as_an_owner(
    cli: Cli, app_db: AppDb, api_role: dict[str, str]
) -> None:
    """Not the database's owner, but a table's (a migration role): owner's advice too."""
    role = api_role["DB_USER"]
    app_db.query("CREATE TABLE migrated (x int)")
    app_db.query(f'ALTER TABLE migrated OWNER TO "{role}"')
    data = cli("doctor", "--json", env=api_role).json()
    (advice,) = [a for a in data["recommendations"] if f'ALTER ROLE "{role}"' in a]
    assert f'Role "{role}" owns database "{app_db.name}" or tables in it' in advice
    assert "statement_timeout = '4min'" in advice


def test_role_defaults_silence_the_warning(cli: Cli, app_db: AppDb) -> None:
    app_db.query(f"ALTER ROLE \"{app_db.role}\" SET statement_timeout = '5s'")
    app_db.query(
        f'ALTER ROLE "{app_db.role}" IN DATABASE "{app_db.name}"'
        " SET idle_in_transaction_session_timeout = '10s'"
    )
    data = cli("doctor", "--json", env=app_db).json()
    (mine,) = [t for t in data["role_timeouts"] if t["role"] == app_db.role]
    assert mine == {
        "role": app_db.role,
        "database": app_db.name,
        "settings": {"statement_timeout": "5s", "idle_in_transaction_session_timeout": "10s"},
        "sources": {
            "statement_timeout": "role",
            "idle_in_transaction_session_timeout": "role in database",
        },
        "unset": [],
    }
    assert data["warnings"] == []
    assert not [a for a in data["recommendations"] if "ALTER ROLE" in a]


def test_a_connected_role_without_timeouts_is_reported_too(
    cli: Cli, app_db: AppDb, sessions: Sessions
) -> None:
    other = f"{app_db.name}_batch"
    app_db.pg.create_role(other, "pw-batch")
    app_db.query(f"ALTER ROLE \"{app_db.role}\" SET statement_timeout = '5s'")
    try:
        conn = psycopg2.connect(
            **app_db.pg.connect_kwargs(user=other, password="pw-batch", dbname=app_db.name)
        )
        try:
            data = cli("doctor", "--json", env=app_db).json()
        finally:
            conn.close()
    finally:
        app_db.pg.execute(f'DROP ROLE "{other}"')
    timeouts = {t["role"]: t for t in data["role_timeouts"]}
    assert set(timeouts) == {app_db.role, other}
    # The doctor's own role overrides statement_timeout, so the server's value of it is
    # hidden from its session: the other role's is unknown, not reported as 0.
    assert timeouts[other]["sources"]["statement_timeout"] == "unknown"
    assert timeouts[other]["unset"] == ["idle_in_transaction_session_timeout"]
    assert timeouts[app_db.role]["unset"] == ["idle_in_transaction_session_timeout"]
    assert any(f'ALTER ROLE "{other}"' in advice for advice in data["recommendations"])
    assert any(
        "The server's own statement_timeout is hidden" in advice
        for advice in data["recommendations"]
    )
