"""The lab's CommitRelay on the real server: it passes traffic through untouched, counts the
statements, and loses exactly the one COMMIT it was armed for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from lambda_db_lab.commit_relay import CommitRelay
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb


@pytest.fixture
def relayed(app_db: AppDb) -> Iterator[tuple[CommitRelay, Any]]:
    app_db.query(f'CREATE TABLE t (x int); GRANT ALL ON t TO "{app_db.role}"')
    with CommitRelay(app_db.pg.host, app_db.pg.port) as relay:
        conn = app_db.connect(host=relay.host, port=relay.port, sslmode="disable")
        try:
            yield relay, conn
        finally:
            conn.close()


def count(app_db: AppDb) -> int:
    rows: int = app_db.query("SELECT count(*) FROM t")[0][0]
    return rows


def test_unarmed_it_relays_and_counts(app_db: AppDb, relayed: tuple[CommitRelay, Any]) -> None:
    relay, conn = relayed
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("SELECT x FROM t")
        assert cur.fetchall() == [(1,)]
    assert relay.statements == ["BEGIN", "INSERT INTO t VALUES (1)", "SELECT x FROM t", "COMMIT"]
    assert relay.lost == []
    assert count(app_db) == 1


@pytest.mark.parametrize(("how", "rows"), [("reply", 1), ("request", 0)])
def test_armed_it_loses_one_commit(
    app_db: AppDb, relayed: tuple[CommitRelay, Any], how: str, rows: int
) -> None:
    relay, conn = relayed
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    getattr(relay, f"lose_{how}")()
    with pytest.raises(psycopg2.OperationalError):
        conn.commit()
    assert relay.done.wait(5)
    assert relay.lost == [how]
    assert conn.closed
    assert count(app_db) == rows  # the reply's COMMIT happened, the request's never arrived
    wait_for(lambda: not app_db.backends(), "the relayed session to end")
