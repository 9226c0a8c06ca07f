"""The engine's pool is lambda-db's one connection: its lifecycle, seen from SQLAlchemy.

Killed backends and server restarts between invocations, a connection lost in the middle
of one, a deadline, ``engine.dispose()``: SQLAlchemy must see each new DB-API connection
(its ``connect`` events fire) and never keep using a dead one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import lambda_db
from lambda_db import ConfigurationError, ConnectionLostError, DeadlineExceededError
from lambda_db.database import TRACE_ID
from lambda_db.sqlalchemy import create_engine, with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb

from .conftest import Item


def connects(engine: Engine) -> list[Any]:
    """The DB-API connections SQLAlchemy's ``connect`` event announces, in order."""
    seen: list[Any] = []
    event.listen(engine, "connect", lambda dbapi, record: seen.append(dbapi))
    return seen


@pytest.fixture
def add(engine: Engine) -> Any:
    @with_session(engine)
    def handler(event: dict[str, Any], context: Any, session: Session) -> int:
        session.add(Item(id=event["id"], n=1))
        session.flush()
        if event.get("kill_before_last"):
            event["kill_before_last"]()
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        if event.get("kill_before_commit"):
            event["kill_before_commit"]()
        return int(pid)

    return handler


def test_hundred_invocations_hold_one_server_connection(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    seen = connects(engine)
    pids = {add({"id": f"i{i}"}, LambdaContext()) for i in range(100)}
    rows = env_db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (env_db.application_name,),
    )
    assert rows == [(1,)]
    assert len(pids) == 1
    assert len(seen) == 1
    assert env_db.query("SELECT count(*) FROM items") == [(100,)]
    stats = lambda_db.default_database().stats
    assert (stats.connects, stats.invocations, stats.commits, stats.pings) == (1, 100, 100, 0)


def test_backend_killed_while_frozen_the_next_invocation_succeeds(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    seen = connects(engine)
    first = add({"id": "before"}, LambdaContext())
    env_db.terminate_all()  # waits until the backend is gone: its FATAL is on the socket
    second = add({"id": "after"}, LambdaContext())
    assert second != first
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert seen[0].closed  # nothing of SQLAlchemy's points at the dead one any more
    stats = lambda_db.default_database().stats
    assert (stats.connects, stats.health_check_failures, stats.pings) == (2, 1, 1)
    assert env_db.query("SELECT id FROM items ORDER BY id") == [("after",), ("before",)]


def test_server_restart_the_next_invocation_succeeds(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    seen = connects(engine)
    add({"id": "before"}, LambdaContext())
    env_db.pg.restart()
    add({"id": "after"}, LambdaContext())
    assert len(seen) == 2
    assert env_db.query("SELECT count(*) FROM items") == [(2,)]


def test_raising_handler_leaves_no_row_and_no_idle_in_transaction(
    engine: Engine, env_db: AppDb
) -> None:
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="doomed"))
        session.flush()
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):  # the original propagates
        handler({}, LambdaContext())
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    assert env_db.backends("idle in transaction") == []
    assert [state for _, state in env_db.backends()] == ["idle"]
    assert lambda_db.default_database().stats.rollbacks == 1


def test_a_failed_flush_rolls_back_and_the_next_invocation_is_clean(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    add({"id": "dup"}, LambdaContext())

    @with_session(engine)
    def duplicate(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="other"))
        session.add(Item(id="dup"))  # the flush after the handler fails

    with pytest.raises(Exception, match="duplicate key") as info:
        duplicate({}, LambdaContext())
    assert type(info.value).__module__.startswith("sqlalchemy")
    assert env_db.query("SELECT id FROM items") == [("dup",)]
    assert env_db.backends("idle in transaction") == []
    add({"id": "next"}, LambdaContext())


def test_connection_lost_mid_invocation_is_typed_and_half_nothing(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    seen = connects(engine)
    with pytest.raises(ConnectionLostError) as info:
        add({"id": "lost", "kill_before_last": env_db.terminate_all}, LambdaContext())
    assert "nothing was replayed" in str(info.value)
    assert not info.value.outcome_unknown
    assert type(info.value.__cause__).__module__ == "sqlalchemy.exc"  # what the handler raised
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    add({"id": "next"}, LambdaContext())
    assert len(seen) == 2
    assert env_db.query("SELECT id FROM items") == [("next",)]


def test_connection_lost_at_commit_says_the_outcome_is_unknown(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    with pytest.raises(ConnectionLostError, match="during COMMIT") as info:
        add({"id": "unknown", "kill_before_commit": env_db.terminate_all}, LambdaContext())
    assert info.value.outcome_unknown
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]  # here: the server rolled back
    add({"id": "next"}, LambdaContext())


def test_a_runaway_statement_is_cut_at_the_deadline(engine: Engine, env_db: AppDb) -> None:
    @with_session(engine)
    def slow(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="slow"))
        session.flush()
        session.execute(text("SELECT pg_sleep(30)"))

    with pytest.raises(DeadlineExceededError) as info:
        slow({}, LambdaContext(timeout=1.5))
    assert info.value.deadline is not None and info.value.deadline < 1.5
    assert not info.value.outcome_unknown
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]
    lambda_db_stats = lambda_db.default_database().stats
    assert lambda_db_stats.deadlines_exceeded == 1


def test_outside_a_scope_core_reuses_the_connection_across_invocations(
    engine: Engine, env_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = connects(engine)
    for i in range(3):
        monkeypatch.setenv(TRACE_ID, f"Root=1-{i}")  # a new invocation each time
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": f"c{i}"})
    assert len(seen) == 1
    assert env_db.query("SELECT count(*) FROM items") == [(3,)]
    assert env_db.backends("idle in transaction") == []


def test_the_dialects_type_settings_hold_on_every_new_connection(env_db: AppDb) -> None:
    """``json_deserializer`` (like ``hstore``) is per-connection state SQLAlchemy sets up when
    it connects; lambda-db opens the connections, so it must hold after a reconnect too."""

    def decode(raw: str | bytes) -> tuple[str, str]:  # psycopg 3 passes bytes
        return "decoded", raw if isinstance(raw, str) else raw.decode()

    engine = create_engine(json_deserializer=decode)
    query = text("""SELECT '{"a": 1}'::json""")
    try:
        with engine.connect() as conn:
            assert conn.execute(query).scalar_one() == ("decoded", '{"a": 1}')
        env_db.terminate_all()
        with engine.connect() as conn:
            assert conn.execute(query).scalar_one() == ("decoded", '{"a": 1}')
        assert lambda_db.default_database().stats.connects == 2
    finally:
        engine.dispose()


def test_dispose_closes_the_connection_and_the_next_use_reopens(
    engine: Engine, env_db: AppDb, add: Any
) -> None:
    seen = connects(engine)
    add({"id": "a"}, LambdaContext())
    engine.dispose()
    assert seen[0].closed
    assert env_db.backends() == []
    add({"id": "b"}, LambdaContext())
    assert len(seen) == 2


def test_a_plain_sqlalchemy_session_on_the_engine_works(engine: Engine, env_db: AppDb) -> None:
    with Session(engine) as session, session.begin():
        session.add(Item(id="plain"))
    with Session(engine) as session:
        assert session.scalars(select(Item.id)).all() == ["plain"]
    assert env_db.backends("idle in transaction") == []


@pytest.mark.parametrize(
    ("name", "value", "instead"),
    [
        ("pool_pre_ping", True, "without a round trip"),
        ("poolclass", object, "pool of one"),
        ("pool_size", 5, "right size"),
        ("pool_recycle", 300, "DB_MAX_AGE"),
        ("pool_reset_on_return", "rollback", "checkin sends nothing"),
        ("connect_args", {"password": "x"}, "DB_* variables"),
        ("creator", object, "DB_* variables"),
        ("isolation_level", "SERIALIZABLE", "with_session(isolation_level=...)"),
        ("client_encoding", "utf8", "pins RDS Proxy"),
    ],
)
def test_arguments_that_would_take_over_are_refused_by_name(
    app_db: AppDb, name: str, value: Any, instead: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(instead)) as info:
        create_engine(lambda_db.Database(app_db.settings), **{name: value})
    assert info.value.variable == name


def test_no_password_in_the_engines_repr_url_or_errors(env_db: AppDb) -> None:
    engine = create_engine()
    shown = [repr(engine), str(engine.url), repr(engine.pool.status())]
    env_db.query(f'ALTER ROLE "{env_db.role}" CONNECTION LIMIT 0')
    with pytest.raises(lambda_db.ConnectionLimitError) as info, engine.connect():
        pass
    shown.append(str(info.value))
    for text_ in shown:
        assert env_db.password not in text_, text_
    assert env_db.role in repr(engine) and env_db.name in repr(engine)


def test_import_lambda_db_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, lambda_db; "
        "assert 'sqlalchemy' not in sys.modules; "
        "import lambda_db.sqlalchemy; "
        "assert 'sqlalchemy' in sys.modules; "
        "assert 'sqlalchemy.orm' not in sys.modules, 'create_engine users need no ORM'; "
        "assert 'psycopg' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
