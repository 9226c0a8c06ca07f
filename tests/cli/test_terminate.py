"""lambda-db terminate-idle: a dry run ends nothing; --yes ends exactly what it listed."""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import pytest

from lambda_db.cli.terminate import find_idle, terminate
from lambda_db_lab.appdb import AppDb
from tests.cli.conftest import Cli, Sessions


def _alive(conn: psycopg2.extensions.connection) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()
    except psycopg2.OperationalError:
        return False
    return True


def test_dry_run_ends_nothing(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    held = sessions(3, application_name="to-end")
    time.sleep(0.3)
    result = cli(
        "terminate-idle", "--user", app_db.role, "--older-than", "200ms", "--json", env=app_db
    )
    assert result.status == 0, result.stderr
    data = result.json()
    assert data["dry_run"] is True
    listed = {s["pid"] for s in data["sessions"]}
    assert listed == {c.info.backend_pid for c in held}
    assert data["ended"] == 0
    assert all(_alive(c) for c in held)
    assert (
        "Dry run: nothing was ended"
        in cli("terminate-idle", "--user", app_db.role, "--older-than", "200ms", env=app_db).stdout
    )


def test_yes_ends_exactly_the_listed_sessions(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    old = sessions(3, application_name="old")
    time.sleep(1.5)
    young = sessions(2, application_name="young")  # idle, but not long enough
    in_tx = sessions(1, application_name="old-tx")[0]
    with in_tx.cursor() as cur:
        cur.execute("SELECT 1")  # idle in transaction: not the default --state
    admin = app_db.admin()  # another role's idle session: never touched unless named
    try:
        time.sleep(0.1)
        result = cli(
            "terminate-idle",
            "--user",
            app_db.role,
            "--older-than",
            "1s",
            "--yes",
            "--json",
            env=app_db,
        )
        assert result.status == 0, result.stderr
        data = result.json()
        ended = {s["pid"] for s in data["sessions"] if s["outcome"] == "ended"}
        assert ended == {c.info.backend_pid for c in old}
        assert data["ended"] == 3
        remaining = {pid for pid, _ in app_db.backends()}
        assert not ended & remaining
        assert all(not _alive(c) for c in old)
        assert all(_alive(c) for c in young)
        assert _alive(admin)
        assert in_tx.info.backend_pid in remaining
    finally:
        admin.close()


def test_idle_in_transaction_state(cli: Cli, app_db: AppDb, sessions: Sessions) -> None:
    idle, in_tx = sessions(2)
    with in_tx.cursor() as cur:
        cur.execute("SELECT 1")
    time.sleep(0.3)
    data = cli(
        "terminate-idle",
        "--user",
        app_db.role,
        "--older-than",
        "200ms",
        "--state",
        "idle-in-transaction",
        "--yes",
        "--json",
        env=app_db,
    ).json()
    assert [s["pid"] for s in data["sessions"]] == [in_tx.info.backend_pid]
    assert data["ended"] == 1
    assert _alive(idle)


def test_a_session_active_again_at_kill_time_is_skipped(app_db: AppDb, sessions: Sessions) -> None:
    busy, idle = sessions(2, application_name="recheck")
    time.sleep(1.2)
    conn = app_db.connect()
    conn.autocommit = True
    try:
        criteria: dict[str, Any] = {
            "users": [app_db.role],
            "older_than": 1.0,
            "application": "recheck",
        }
        listed = find_idle(conn, **criteria)
        assert {c.pid for c in listed} == {busy.info.backend_pid, idle.info.backend_pid}
        with busy.cursor() as cur:  # used between the listing and the kill
            cur.execute("SELECT 1")
        busy.commit()
        outcomes = terminate(conn, listed, **criteria)
    finally:
        conn.close()
    assert outcomes[busy.info.backend_pid].startswith("skipped")
    assert outcomes[idle.info.backend_pid] == "ended"
    assert _alive(busy)


def test_never_its_own_backend(app_db: AppDb) -> None:
    conn = app_db.connect()
    conn.autocommit = True
    try:
        time.sleep(0.2)
        listed = find_idle(conn, users=[app_db.role], older_than=0.0)
        assert conn.info.backend_pid not in {c.pid for c in listed}
    finally:
        conn.close()


def test_a_user_is_required(cli: Cli) -> None:
    assert cli("terminate-idle", "--older-than", "10m").status == 2
    with pytest.raises(ValueError, match="name at least one user"):
        find_idle(None, users=[], older_than=1)  # type: ignore[arg-type]
