"""What lambda-db sends to the server, counted from the server's own statement log.

The pin recorder (``tests/support/pinlog.py``) reads what every session sent. Here it
counts: a warm invocation must cost no more statements than the article's naive
module-level connection, measured in the same test; an invocation that never asks for the
connection opens nothing and sends nothing; and nothing lambda-db sends is on RDS Proxy's
pinning list, the startup packet included (which the statement log cannot show: the
server's ``pg_settings`` can). The first tests are the recorder's own controls: it sees
every pinning statement, and flags nothing harmless.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import pytest

import lambda_db
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.drivers import Kit
from tests.support.pinlog import PinLog

INSERT = "INSERT INTO items (id) VALUES (%s)"
Handler = Callable[[dict[str, Any], Any], int]


@pytest.fixture
def env_db(app_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> AppDb:
    """``app_db`` as the process environment (as Lambda gives it), with an ``items`` table."""
    for key, value in app_db.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PGOPTIONS", raising=False)
    app_db.query(f'CREATE TABLE items (id text PRIMARY KEY); GRANT ALL ON items TO "{app_db.role}"')
    return app_db


def shape(sql: str) -> str:
    """``sql`` with its literals replaced by ``?`` (two invocations differ only in values)."""
    return re.sub(r"'(?:[^']|'')*'|\b\d+\b", "?", " ".join(sql.split()))


def naive_invocation(conn: Any, item_id: str) -> None:
    """The article's module-level connection: one INSERT, then commit (what psycopg2's
    ``with conn:`` does; psycopg 3's would also close the connection)."""
    with conn.cursor() as cur:
        cur.execute(INSERT, (item_id,))
    conn.commit()


@lambda_db.with_connection
def one_insert(event: dict[str, Any], context: Any) -> None:
    with lambda_db.get_connection().cursor() as cur:
        cur.execute(INSERT, (event["id"],))


# -- the recorder's controls ---------------------------------------------------------------

PINNING = [
    ("SET work_mem = '8MB'", "SET"),
    ("SET LOCAL work_mem = '8MB'", "SET"),
    ("RESET work_mem", "RESET"),
    ("SELECT set_config('work_mem', '8MB', true)", "set_config()"),
    ("DISCARD ALL", "DISCARD"),
    ("PREPARE p AS SELECT 1", "PREPARE"),
    ("EXECUTE p", "EXECUTE of a prepared statement"),
    ("DEALLOCATE p", "DEALLOCATE"),
    ("LISTEN lambda_db", "LISTEN"),
    ("SELECT pg_advisory_lock(1)", "session-level advisory lock"),
    ("SELECT pg_try_advisory_lock_shared(2)", "session-level advisory lock"),
    ("CREATE TEMP TABLE scratch (n int)", "temporary table"),
    ("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT", "DECLARE (cursor)"),
    ("SELECT '" + "x" * 17_000 + "'", "statement of 17009 bytes (over 16 KB)"),
]

HARMLESS = [
    "SELECT pg_advisory_xact_lock(1)",
    "UPDATE items SET id = id WHERE id = 'SET x; set_config('",
    "SHOW work_mem",
    "SELECT current_setting('work_mem')",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT 1; COMMIT",
    "SELECT '" + "x" * 16_000 + "'",
]


#: The recorder's controls send their statements through plain psycopg2 (or psycopg 3)
#: connections, not through lambda-db: the driver under test plays no part in them.
CONTROL = pytest.mark.drivers("psycopg2", reason="a control of the recorder: no lambda-db in it")


@CONTROL
@pytest.mark.pins("control: sends every statement on the pinning list, to prove it is seen")
def test_recorder_sees_every_pinning_statement(env_db: AppDb, pinlog: PinLog) -> None:
    conn = env_db.connect(application_name="control")
    conn.autocommit = True
    with pinlog.capture() as block, conn.cursor() as cur:
        for sql, _ in PINNING:
            cur.execute(sql)
    conn.close()
    assert [f.reason for f in block.findings()] == [reason for _, reason in PINNING]
    assert all(f.record.application_name == "control" for f in block.findings())


@CONTROL
@pytest.mark.pins("control: a psycopg 3 named prepared statement, to prove it is seen")
def test_recorder_sees_a_named_prepared_statement(env_db: AppDb, pinlog: PinLog) -> None:
    psycopg = pytest.importorskip("psycopg")
    kwargs = env_db.pg.connect_kwargs(user=env_db.role, password=env_db.password,
                                      dbname=env_db.name, application_name="psycopg3")  # fmt: skip
    with pinlog.capture() as block, psycopg.connect(**kwargs, autocommit=True) as conn:
        conn.execute("SELECT %s::int", (1,))  # unnamed: does not pin
        conn.execute("SELECT %s::int", (2,), prepare=True)  # named: pins
    (finding,) = block.findings()
    assert finding.reason.startswith("execution of the named prepared statement")
    assert shape(finding.record.sql) == "SELECT $?::int"


@CONTROL
def test_recorder_flags_nothing_harmless_or_from_the_superuser(
    env_db: AppDb, pinlog: PinLog
) -> None:
    conn = env_db.connect(application_name="harmless")
    conn.autocommit = True
    with pinlog.capture() as block:
        with conn.cursor() as cur:
            for sql in HARMLESS:
                cur.execute(sql)
        env_db.query("SET work_mem = '8MB'; SELECT pg_advisory_lock(1)")  # as the superuser
    conn.close()
    assert block.findings() == []
    assert [shape(s) for s in block.statements(env_db.role)] == [shape(s) for s in HARMLESS]
    assert block.connections(env_db.role, "harmless") == 0  # opened before the block


@CONTROL
def test_recorder_counts_connections_by_role_and_application(env_db: AppDb, pinlog: PinLog) -> None:
    with pinlog.capture() as block:
        for name in ("one", "two", "two"):
            env_db.connect(application_name=name).close()
    assert block.connections(env_db.role) == 3
    assert block.connections(env_db.role, "two") == 2
    assert block.connections("someone else") == 0


# -- what lambda-db sends ----------------------------------------------------------------


def test_warm_invocation_sends_what_the_naive_pattern_sends(
    env_db: AppDb, pinlog: PinLog, dbapi: Kit
) -> None:
    """Against the naive module-level connection of the same driver."""
    naive = dbapi.connect(env_db, application_name="naive")
    naive_invocation(naive, "naive-0")  # both warm: connected by an earlier invocation
    one_insert({"id": "ours-0"}, LambdaContext())
    with pinlog.capture() as block:
        naive_invocation(naive, "naive-1")
        one_insert({"id": "ours-1"}, LambdaContext(timeout=3.0))
    naive.close()

    theirs = [shape(s) for s in block.statements(env_db.role, "naive")]
    ours = [shape(s) for s in block.statements(env_db.role, env_db.application_name)]
    assert theirs == ["BEGIN", shape(dbapi.logged(INSERT, "'x'")), "COMMIT"]  # as measured
    assert ours == theirs
    assert block.connections(env_db.role) == 0


def autocommit_handler() -> Any:
    """``@with_connection(autocommit=True)``, core v2's single-statement invocation."""
    # autocommit is core v2's: typed loosely until then
    decorate = cast(Callable[..., Callable[[Handler], Handler]], lambda_db.with_connection)

    @decorate(autocommit=True)
    def count(event: dict[str, Any], context: Any) -> int:
        with lambda_db.get_connection().cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            row = cur.fetchone()
            return int(row[0]) if row else -1

    return count


def test_autocommit_invocation_sends_only_the_statement(env_db: AppDb, pinlog: PinLog) -> None:
    handler = autocommit_handler()
    assert handler({}, LambdaContext()) == 0  # warm
    with pinlog.capture() as block:
        assert handler({}, LambdaContext(timeout=3.0)) == 0
    assert block.statements(env_db.role) == ["SELECT count(*) FROM items"]
    assert block.connections(env_db.role) == 0


def test_untouched_invocation_opens_nothing_and_sends_nothing(
    env_db: AppDb, pinlog: PinLog
) -> None:
    @lambda_db.with_connection
    def bad_request(event: dict[str, Any], context: Any) -> dict[str, int]:
        return {"statusCode": 400}

    with pinlog.capture() as cold:  # the environment's first invocation
        bad_request({}, LambdaContext(timeout=3.0))
    one_insert({"id": "warm"}, LambdaContext())
    with pinlog.capture() as warm:
        bad_request({}, LambdaContext(timeout=3.0))

    for block in (cold, warm):
        assert block.connections(env_db.role) == 0
        assert block.statements(env_db.role) == []


def test_health_check_on_a_warm_connection_sends_nothing(env_db: AppDb, pinlog: PinLog) -> None:
    db = lambda_db.default_database()
    conn = db.get_connection()  # opened
    with pinlog.capture() as block:
        for _ in range(3):
            assert db.get_connection() is conn  # checked: local state and a socket poll
    assert block.statements(env_db.role) == []
    assert block.connections(env_db.role) == 0
    assert db.stats.reuses == 3


def test_checkout_without_a_statement_sends_nothing(env_db: AppDb, pinlog: PinLog) -> None:
    @lambda_db.with_connection
    def check_only(event: dict[str, Any], context: Any) -> None:
        lambda_db.get_connection()

    one_insert({"id": "warm"}, LambdaContext())
    with pinlog.capture() as block:
        check_only({}, LambdaContext(timeout=3.0))
    assert block.statements(env_db.role) == []
    assert block.connections(env_db.role) == 0


# -- the startup packet ------------------------------------------------------------------


@lambda_db.with_connection
def client_settings(event: dict[str, Any], context: Any) -> list[str]:
    """What the server set from the client's startup packet, seen from inside the session."""
    with lambda_db.get_connection().cursor() as cur:
        cur.execute("SELECT name FROM pg_settings WHERE source = 'client' ORDER BY name")
        return [str(name) for (name,) in cur.fetchall()]


def test_startup_packet_carries_no_options(env_db: AppDb) -> None:
    """Only ``application_name`` (RDS Proxy rejects ``options``: "command-line options")."""
    assert client_settings({}, LambdaContext()) == ["application_name"]


def test_startup_packet_carries_no_options_even_with_pgoptions_set(
    env_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=1234kB")
    assert client_settings({}, LambdaContext()) == ["application_name"]


@CONTROL
def test_plain_libpq_sends_pgoptions(env_db: AppDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: the method sees ``options`` (as source ``client``)."""
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=1234kB")
    conn = env_db.connect(application_name="control")
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_settings WHERE source = 'client' ORDER BY name")
        names = [name for (name,) in cur.fetchall()]
    conn.close()
    assert names == ["application_name", "work_mem"]
