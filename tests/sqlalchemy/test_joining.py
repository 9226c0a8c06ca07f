"""Inside an invocation, every SQLAlchemy ``Connection`` and ``Session`` joins its one transaction.

The review of issue 10 found that a second ``Connection`` or ``Session`` on the engine got
the same DB-API connection as the first, and that its close sent SQLAlchemy's ``ROLLBACK``,
silently discarding the first one's work (a Core read inside ``with_session``: the session's
insert was gone; ``engine.connect()`` or ``Session(engine)`` inside ``with_connection``: the
raw insert was gone), and that ``engine.begin()`` inside ``with_connection`` committed half an
invocation. Now the invocation commits once, when the handler returns: a joined
transaction's commit releases its savepoint, its rollback (or a close without commit) rolls
back to it, undoing its own work only. Outside a scope a second checkout is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lambda_db import LambdaDbError, idempotent, with_connection
from lambda_db.idempotency import ensure_schema
from lambda_db.sqlalchemy import with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

from .conftest import Item, ids, raw_insert
from .test_statements import INSERT, shapes

RAW_INSERT = "INSERT INTO items (id) VALUES (?)"
CORE_INSERT = "INSERT INTO items (id) VALUES (?)"
COUNT = "SELECT count(*) FROM items"


# -- inside with_session -------------------------------------------------------------------


def test_a_core_read_inside_with_session_keeps_the_sessions_work(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> int:
        session.add(Item(id="orm"))
        session.flush()
        with warm.connect() as conn:  # a helper that reads, and never commits
            return int(conn.execute(text(COUNT)).scalar_one())

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == 1  # it sees the session's flushed row
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", INSERT, "SAVEPOINT sp", COUNT, "ROLLBACK TO SAVEPOINT sp", "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["orm"]


def test_a_session_of_the_handlers_own_commits_with_the_invocation(
    warm: Engine, env_db: AppDb
) -> None:
    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="injected"))
        session.flush()
        with Session(warm) as other:
            other.add(Item(id="other"))
            other.commit()
        if event.get("fail"):
            raise RuntimeError("after both")

    with pytest.raises(RuntimeError, match="after both"):
        handler({"fail": True}, LambdaContext())
    assert ids(env_db) == []  # the other session's commit was not the invocation's
    handler({}, LambdaContext())
    assert ids(env_db) == ["injected", "other"]


def test_idempotent_under_with_session_stores_its_record_with_the_sessions_writes(
    warm: Engine, env_db: AppDb
) -> None:
    """``session.commit()`` in the handler used to send COMMIT, separating the writes from
    the idempotency record (which ``@idempotent`` refuses); now it joins the invocation."""
    conn = env_db.connect()
    try:
        with conn:
            ensure_schema(conn)
    finally:
        conn.close()
    runs: list[str] = []

    @with_session(warm)
    @idempotent("id")
    def handler(event: dict[str, str], context: Any, session: Session) -> dict[str, str]:
        runs.append(event["id"])
        session.add(Item(id=event["id"]))
        session.commit()
        return {"created": event["id"]}

    assert handler({"id": "a"}, LambdaContext()) == {"created": "a"}
    assert handler({"id": "a"}, LambdaContext()) == {"created": "a"}  # replayed
    assert runs == ["a"]
    assert ids(env_db) == ["a"]


# -- inside with_connection ----------------------------------------------------------------


def test_engine_connect_inside_with_connection_keeps_the_raw_work(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_connection
    def handler(event: Any, context: Any) -> int:
        raw_insert("raw")
        with warm.connect() as conn:
            return int(conn.execute(text(COUNT)).scalar_one())

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == 1
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", RAW_INSERT, "SAVEPOINT sp", COUNT, "ROLLBACK TO SAVEPOINT sp", "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["raw"]


@pytest.mark.parametrize(("commit", "committed"), [(True, ["orm", "raw"]), (False, ["raw"])])
def test_a_plain_session_inside_with_connection_undoes_only_its_own_uncommitted_work(
    warm: Engine, env_db: AppDb, pinlog: PinLog, commit: bool, committed: list[str]
) -> None:
    @with_connection
    def handler(event: Any, context: Any) -> str:
        raw_insert("raw")
        with Session(warm) as session:
            session.add(Item(id="orm"))
            session.flush()
            if commit:
                session.commit()
        return "ok"

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == "ok"
    end = "RELEASE SAVEPOINT sp" if commit else "ROLLBACK TO SAVEPOINT sp"
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", RAW_INSERT, "SAVEPOINT sp", INSERT, end, "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == committed


def test_engine_begin_inside_with_connection_commits_with_the_invocation_only(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_connection
    def handler(event: dict[str, Any], context: Any) -> str:
        raw_insert(f"raw-{event['id']}")
        with warm.begin() as conn:
            conn.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": f"core-{event['id']}"})
        if event.get("fail"):
            raise RuntimeError("after engine.begin()")
        return "ok"

    with pytest.raises(RuntimeError, match=r"after engine\.begin\(\)"):
        handler({"id": "a", "fail": True}, LambdaContext())
    assert ids(env_db) == []  # nothing half-committed
    with pinlog.capture() as block:
        assert handler({"id": "b"}, LambdaContext()) == "ok"
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", RAW_INSERT, "SAVEPOINT sp", CORE_INSERT, "RELEASE SAVEPOINT sp", "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["core-b", "raw-b"]


def test_session_commit_stacked_inside_with_connection_commits_with_the_invocation_only(
    warm: Engine, env_db: AppDb
) -> None:
    @with_connection
    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> None:
        raw_insert("raw")
        session.add(Item(id="orm"))
        session.commit()
        raise RuntimeError("after session.commit()")

    with pytest.raises(RuntimeError, match=r"after session\.commit\(\)"):
        handler({}, LambdaContext())
    assert ids(env_db) == []
    assert env_db.backends("idle in transaction") == []


def test_a_failed_flush_after_other_work_rolls_back_only_the_session(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    """The session began after ``with_connection``'s insert, so it runs in a savepoint: the
    duplicate key undoes the session's work, and the handler can answer and go on."""
    env_db.query("INSERT INTO items (id) VALUES ('dup')")

    @with_connection
    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> int:
        raw_insert("raw")
        session.add(Item(id="dup"))
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            raw_insert("conflict-logged")
            return 409
        return 201

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == 409
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", RAW_INSERT, "SAVEPOINT sp", INSERT, "ROLLBACK TO SAVEPOINT sp", RAW_INSERT,
        "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["conflict-logged", "dup", "raw"]


def test_a_joined_connections_rollback_undoes_only_its_own_work(
    warm: Engine, env_db: AppDb
) -> None:
    @with_connection
    def handler(event: Any, context: Any) -> str:
        raw_insert("raw")
        with warm.connect() as conn:
            conn.execute(text("INSERT INTO items (id) VALUES ('undone')"))
            conn.rollback()
            conn.execute(text("INSERT INTO items (id) VALUES ('kept')"))
            conn.commit()
        return "ok"

    assert handler({}, LambdaContext()) == "ok"
    assert ids(env_db) == ["kept", "raw"]


def test_a_connection_kept_past_its_invocation_cannot_end_the_next_one(
    warm: Engine, env_db: AppDb, caplog: pytest.LogCaptureFixture
) -> None:
    kept: list[Any] = []

    @with_connection
    def first(event: Any, context: Any) -> None:
        conn = warm.connect()  # never closed here: still open when the handler returns
        conn.execute(text("INSERT INTO items (id) VALUES ('first')"))
        kept.append(conn)

    @with_connection
    def second(event: Any, context: Any) -> None:
        raw_insert("second")
        kept[0].close()  # its rollback is not this invocation's to send

    first({}, LambdaContext())
    # Left open, never committed: rolled back as its close would have, with a WARNING.
    assert "left open" in caplog.text
    second({}, LambdaContext())
    assert ids(env_db) == ["second"]


# -- outside a scope: one connection, one checkout -------------------------------------------


def test_outside_a_scope_a_second_checkout_is_refused_and_loses_nothing(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    with pinlog.capture() as block, warm.connect() as first:
        first.execute(text("INSERT INTO items (id) VALUES ('first')"))
        with pytest.raises(LambdaDbError, match="one connection") as info:
            warm.connect()
        assert "@with_session" in str(info.value)
        with pytest.raises(LambdaDbError, match="one connection"), Session(warm) as session:
            session.execute(text("SELECT 1"))
        first.commit()
    assert shapes(block.statements(env_db.role)) == ["BEGIN", CORE_INSERT, "COMMIT"]
    assert ids(env_db) == ["first"]
    with warm.connect() as again:  # once the first is back, the next checkout is fine
        assert again.execute(text(COUNT)).scalar_one() == 1
