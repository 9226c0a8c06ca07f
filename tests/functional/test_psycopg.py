"""What is psycopg 3's own in ``DB_DRIVER=psycopg``: no named prepares, characteristics sent
with ``BEGIN`` and never as ``SET``, a connect bounded exactly, psycopg's transaction blocks.

Everything the two drivers share (health checks, retries, deadlines, statements counted
against the naive pattern) runs for both in the rest of ``tests/functional`` and
``tests/faults``; these cases are about psycopg 3 only.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

import lambda_db
from lambda_db import Database, with_connection
from lambda_db._driver import get_driver
from lambda_db._invocation import Invocation
from lambda_db._psycopg import PSYCOPG
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.drivers("psycopg", reason="psycopg 3's own behaviour")

SELECT = "SELECT %s::int"


@pytest.fixture
def items_db(app_db: AppDb) -> AppDb:
    """``app_db`` (with ``DB_DRIVER=psycopg``) and an ``items`` table."""
    app_db.query(f'CREATE TABLE items (id text PRIMARY KEY); GRANT ALL ON items TO "{app_db.role}"')
    return app_db


def test_the_connection_is_psycopg_3s_with_prepares_off(app_db: AppDb) -> None:
    db = Database(app_db.settings)
    conn: Any = db.get_connection()
    assert type(conn) is psycopg.Connection  # the library's own class, not a subclass
    assert conn.prepare_threshold is None
    assert conn.autocommit is False
    db.close()


def test_a_query_run_many_times_is_never_prepared(items_db: AppDb, pinlog: PinLog) -> None:
    """psycopg 3 prepares a query on its 6th run by default (``prepare_threshold=5``), and a
    named prepared statement pins RDS Proxy: lambda-db's connections never prepare, not even
    when asked (``prepare=True``)."""
    db = Database(items_db.settings)

    @with_connection(database=db, inject="conn")
    def handler(event: dict[str, Any], context: Any, conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute(SELECT, (event["n"],), prepare=event.get("prepare"))
            row = cur.fetchone()
        return int(row[0])

    with pinlog.capture() as block:
        for n in range(12):
            assert handler({"n": n}, LambdaContext()) == n
        assert handler({"n": 99, "prepare": True}, LambdaContext()) == 99
    db.close()
    sent = [r for r in block.records if r.kind == "statement" and r.user == items_db.role]
    assert [r.sql for r in sent].count("SELECT $1::int") == 13  # unnamed, every time
    assert [r.prepared for r in sent] == [None] * len(sent)
    assert block.findings() == []


def test_characteristics_go_with_begin_and_never_as_set(items_db: AppDb, pinlog: PinLog) -> None:
    """Each invocation's options, whatever the previous one left: only ``BEGIN ...``."""
    db = Database(items_db.settings)
    options: list[dict[str, Any]] = [
        {"autocommit": True},
        {"isolation_level": "SERIALIZABLE", "readonly": True, "deferrable": True},
        {"autocommit": True},
        {"isolation_level": "repeatable read"},
        {},
        {"readonly": False},
    ]
    for option in options[:1]:  # connect outside the block: the log shows the traffic only
        with db.invocation(LambdaContext(), **option) as scope:
            scope.connection.execute("SELECT 1")
    with pinlog.capture() as block:
        for option in options:
            with db.invocation(LambdaContext(), **option) as scope:
                scope.connection.execute("SELECT 1")
    db.close()
    assert block.statements(items_db.role) == [
        "SELECT 1",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        "SELECT 1",
        "COMMIT",
        "SELECT 1",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "SELECT 1",
        "COMMIT",
        "BEGIN",
        "SELECT 1",
        "COMMIT",
        "BEGIN READ WRITE",
        "SELECT 1",
        "COMMIT",
    ]


def test_changing_autocommit_and_characteristics_sends_nothing(
    items_db: AppDb, pinlog: PinLog
) -> None:
    """psycopg 3 keeps them locally for its next ``BEGIN`` (psycopg2 would send
    ``SET default_transaction_*`` in autocommit); outside a transaction nothing is sent."""
    db = Database(items_db.settings)
    conn = db.get_connection()
    driver = get_driver("psycopg")
    with pinlog.capture() as block:
        for autocommit, level, readonly, deferrable in [
            (True, None, None, None),
            (False, "SERIALIZABLE", True, True),
            (False, None, None, None),
            (True, None, None, None),
            (False, "READ COMMITTED", False, False),
        ]:
            driver.prepare(conn, autocommit=autocommit, isolation_level=level,
                           readonly=readonly, deferrable=deferrable)  # fmt: skip
    assert block.statements(items_db.role) == []
    db.close()


def test_psycopgs_transaction_blocks_nest_inside_the_invocations(items_db: AppDb) -> None:
    """``with conn.transaction():`` is a savepoint inside the invocation's transaction (no
    pin: savepoints are not on the list); its rollback keeps the rest of the invocation."""

    def insert_twice(conn: Any) -> None:
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES ('doomed')")
            conn.execute("INSERT INTO items VALUES ('kept')")

    @with_connection(database=Database(items_db.settings), inject="conn")
    def handler(event: Any, context: Any, conn: Any) -> None:
        conn.execute("INSERT INTO items VALUES ('kept')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert_twice(conn)

    handler({}, LambdaContext())
    assert items_db.query("SELECT id FROM items") == [("kept",)]


def test_an_unknown_isolation_level_is_refused(items_db: AppDb) -> None:
    with pytest.raises(lambda_db.ConfigurationError, match="SNAPSHOT"):  # when decorating
        with_connection(database=Database(items_db.settings), isolation_level="SNAPSHOT")
    scope = Invocation(Database(items_db.settings), None)
    with pytest.raises(ValueError, match="unknown isolation level 'SNAPSHOT'"):  # the driver's
        PSYCOPG.prepare(
            cast(Any, scope._db.get_connection()), autocommit=False, isolation_level="SNAPSHOT",
            readonly=None, deferrable=None,
        )  # fmt: skip
    scope._db.close()
    assert items_db.backends("idle in transaction") == []


# -- the connect bound -------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake and then nothing ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: the startup packet waits for an answer forever
        yield listener.getsockname()[1]


def silent_params(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "dbname": "db", "user": "u",
            "password": "pw", "sslmode": "disable", "connect_timeout": 2}  # fmt: skip


@pytest.mark.parametrize("timeout", [0.2, 0.75])
def test_connect_is_bounded_exactly_by_the_attempts_timeout(
    silent_server: int, timeout: float
) -> None:
    driver = get_driver("psycopg")
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout expired") as info:
        driver.connect(silent_params(silent_server), timeout=timeout)
    elapsed = time.monotonic() - started
    assert timeout <= elapsed < timeout + 0.05, f"{elapsed:.3f} s for {timeout} s"
    assert isinstance(info.value, psycopg.errors.ConnectionTimeout)


def test_control_psycopg_connect_rounds_the_timeout_up_to_two_seconds(silent_server: int) -> None:
    """Why lambda-db drives the connect itself: ``psycopg.connect`` takes libpq's whole
    seconds, and anything under 2 as 2."""
    params = silent_params(silent_server) | {"connect_timeout": 1}
    started = time.monotonic()
    with pytest.raises(psycopg.errors.ConnectionTimeout):
        psycopg.connect(**params)
    assert time.monotonic() - started >= 1.9


def test_the_connect_budget_holds_through_the_database(app_db: AppDb, silent_server: int) -> None:
    db = Database(app_db.settings.replace(port=silent_server, connect_budget=0.6),
                  sleep=lambda s: None)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(lambda_db.DatabaseUnavailableError) as info:
        db.get_connection()
    assert time.monotonic() - started < 0.6 + 0.05
    assert "timeout expired" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


# -- the benchmark's wire counter ------------------------------------------------------------


@pytest.mark.pins("the benchmark's naive psycopg 3 case prepares, as psycopg 3 does by default")
def test_the_benchmarks_wire_counter_sees_statements_and_named_prepares(app_db: AppDb) -> None:
    """``bench/psycopg_driver.py`` counts statements on the wire: its control is naive
    psycopg 3 with its defaults, whose sixth run of a query is a named prepared statement."""
    from bench import psycopg_driver

    app_db.query(f'CREATE TABLE {psycopg_driver.TABLE} (n bigint); '
                 f'GRANT ALL ON {psycopg_driver.TABLE} TO "{app_db.role}"')  # fmt: skip
    wire = psycopg_driver.on_the_wire(app_db)
    expected = {"statements": 3, "round_trips": 3, "named": 0}
    assert wire[psycopg_driver.LAMBDA_DB["psycopg"]] == expected
    assert wire[psycopg_driver.LAMBDA_DB["psycopg2"]] == expected
    assert wire[psycopg_driver.NAIVE_PG2] == expected
    assert wire[psycopg_driver.NAIVE_PG3_UNPREPARED] == expected
    assert wire[psycopg_driver.NAIVE_PG3] == expected | {"named": 1}


def test_a_refused_login_carries_no_password_in_its_cause_chain(items_db: AppDb) -> None:
    """psycopg attaches the finished PGconn (password included) to a connect error."""
    secret = "not-the-password-" + items_db.password
    db = Database(items_db.settings.replace(password=secret))
    with pytest.raises(lambda_db.AuthenticationError) as info:
        db.get_connection()
    seen: BaseException | None = info.value
    while seen is not None:
        assert getattr(seen, "pgconn", None) is None
        assert secret not in repr(seen) and secret not in str(seen)
        seen = seen.__cause__ or seen.__context__
