"""What the invocation deadline must not break: COPY, large objects, threads.

lambda-db ends every statement inside the invocation's deadline. It must do so without a
psycopg2 wait callback on the handler's statements: while one is installed psycopg2
refuses ``COPY`` and large objects, and serializes a connection shared by threads through
the callback. Each case runs in a 3 s function, as the fault cases do, and checks the
data that went through, not only that nothing raised. With psycopg 3 the same cases run
through its own API (``cursor.copy()``); it has no large object API, so that case is
psycopg2's alone.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest

from lambda_db import Database, with_connection
from lambda_db.testing import LambdaContext
from lambda_db_lab.ledger import invoke
from tests.conftest import AppDb
from tests.faults.conftest import FUNCTION_TIMEOUT
from tests.support.drivers import Kit

ROWS = 20_000


def run(db: Database, body: Any) -> Any:
    """Invoke ``body(conn)`` under ``@with_connection`` in a 3 s function; its return value."""
    returned: list[Any] = []

    @with_connection(database=db)
    def handler(event: dict[str, Any], context: Any) -> None:
        returned.append(body(db.get_connection()))

    outcome = invoke(handler, {"id": "x"}, LambdaContext(timeout=FUNCTION_TIMEOUT))
    assert outcome.ok, outcome
    assert outcome.elapsed < FUNCTION_TIMEOUT
    return returned[0]


def test_copy_in_and_out_inside_the_deadline(app_db: AppDb, dbapi: Kit) -> None:
    app_db.query(f'CREATE TABLE copied (n int, s text); GRANT ALL ON copied TO "{app_db.role}"')
    data = "".join(f"{n}\trow {n}\n" for n in range(ROWS))

    def body(conn: Any) -> str:
        with conn.cursor() as cur:
            dbapi.copy_in(cur, "COPY copied (n, s) FROM STDIN", data)
            return dbapi.copy_out(cur, "COPY (SELECT n, s FROM copied ORDER BY n) TO STDOUT")

    db = Database(app_db.settings)
    assert run(db, body) == data
    assert app_db.query("SELECT count(*) FROM copied") == [(ROWS,)]  # and it was committed
    db.close()


@pytest.mark.drivers("psycopg2", reason="psycopg 3 has no large object API (lo_* in SQL only)")
def test_large_object_round_trip_inside_the_deadline(app_db: AppDb) -> None:
    payload = secrets.token_bytes(1024 * 1024)

    def body(conn: Any) -> tuple[int, bytes]:
        written = conn.lobject(0, "wb")
        written.write(payload)
        oid = int(written.oid)
        written.close()
        read = conn.lobject(oid, "rb")
        data = bytes(read.read())
        read.close()
        return oid, data

    db = Database(app_db.settings)
    oid, data = run(db, body)
    assert data == payload
    # Committed with the invocation: the object is there for the next client.
    assert app_db.query("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = %s", (oid,)) == [
        (1,)
    ]
    db.close()


def test_two_threads_share_the_invocations_connection_inside_the_deadline(app_db: AppDb) -> None:
    app_db.query(f'CREATE TABLE seen (t int, n int); GRANT ALL ON seen TO "{app_db.role}"')
    db = Database(app_db.settings)

    def body(conn: Any) -> list[int]:
        def work(t: int) -> None:
            shared = db.get_connection()  # the invocation's connection, from another thread
            assert shared is conn
            for n in range(50):
                with shared.cursor() as cur:
                    cur.execute("INSERT INTO seen VALUES (%s, %s)", (t, n))

        threads = [threading.Thread(target=work, args=(t,)) for t in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with conn.cursor() as cur:
            cur.execute("SELECT t, count(*) FROM seen GROUP BY t ORDER BY t")
            return [int(count) for _, count in cur.fetchall()]

    assert run(db, body) == [50, 50]
    assert app_db.query("SELECT count(*) FROM seen") == [(100,)]
    db.close()
