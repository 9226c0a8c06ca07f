"""What SQLAlchemy through lambda-db sends, read from the server's statement log.

A warm invocation of a ``@with_session`` ORM handler must send ``BEGIN``, the handler's
statements and ``COMMIT``: no ``SELECT 1`` (``pool_pre_ping``), no ``ROLLBACK`` at checkin.
The engine's first connect sends the dialect's reads once; nothing anywhere is on RDS
Proxy's pinning list (the pin recorder fails any test that sends one). The controls show
that the same log does see what SQLAlchemy's own pool sends.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg2
import pytest
import sqlalchemy
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from lambda_db.sqlalchemy import with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

from .conftest import Item

#: What the dialect sends at the engine's first connect (then never again), by driver:
#: reads, and psycopg 3's savepoint around its type lookup (none of it pins).
FIRST_CONNECT = {
    "psycopg2": [
        "BEGIN",
        "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
        "WHERE typname = ?;",
        "ROLLBACK",
        "BEGIN",
        "select pg_catalog.version()",
        "select current_schema()",
        "SHOW default_transaction_isolation",
        "show standard_conforming_strings",
        "ROLLBACK",
    ],
    "psycopg": [
        "BEGIN",
        "select pg_catalog.version()",
        "select current_schema()",
        "SHOW default_transaction_isolation",
        "show standard_conforming_strings",
        'SAVEPOINT "_pg3_1"',
        "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, "
        "typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype(?) ORDER BY t.oid",
        'RELEASE "_pg3_1"',
        "ROLLBACK",
    ],
}
INSERT = "INSERT INTO items (id, n) VALUES (?, ?)"


def shape(sql: str) -> str:
    """``sql`` on one line with its literals and parameters replaced by ``?`` (psycopg2 sends
    values inline, psycopg 3 binds ``$1::BIGINT``) and lambda-db's savepoint names by
    ``sp``."""
    bound = re.sub(r"\$\d+(?:::\w+)?", "?", " ".join(sql.split()))
    bound = re.sub(r"\blambda_db_\d+\b", "sp", bound)
    return re.sub(r"'(?:[^']|'')*'|\b\d+\b", "?", bound)


def shapes(statements: list[str]) -> list[str]:
    return [shape(s) for s in statements]


def add_item(engine: Engine) -> Any:
    @with_session(engine)
    def handler(event: dict[str, Any], context: Any, session: Session) -> str:
        session.add(Item(id=event["id"], n=1))
        return "ok"

    return handler


def test_warm_invocation_sends_begin_the_statements_and_commit(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    handler = add_item(engine)
    with pinlog.capture() as cold:
        assert handler({"id": "cold"}, LambdaContext()) == "ok"
    with pinlog.capture() as warm:
        assert handler({"id": "warm"}, LambdaContext()) == "ok"

    assert shapes(warm.statements(env_db.role)) == ["BEGIN", INSERT, "COMMIT"]
    assert warm.connections(env_db.role) == 0
    first_connect = FIRST_CONNECT[engine.dialect.driver]
    assert shapes(cold.statements(env_db.role)) == [*first_connect, "BEGIN", INSERT, "COMMIT"]
    assert cold.connections(env_db.role) == 1
    assert cold.findings() == warm.findings() == []


def test_the_first_connect_happens_once_per_engine_not_per_connection(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    handler = add_item(engine)
    handler({"id": "cold"}, LambdaContext())
    env_db.terminate_all()  # while "frozen": the next checkout reconnects
    with pinlog.capture() as block:
        assert handler({"id": "after"}, LambdaContext()) == "ok"
    assert block.connections(env_db.role) == 1
    assert shapes(block.statements(env_db.role)) == ["BEGIN", INSERT, "COMMIT"]


def test_reads_through_orm_and_core_send_only_themselves(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_session(engine)
    def report(event: Any, context: Any, session: Session) -> tuple[int, int]:
        orm = len(session.scalars(select(Item)).all())
        core = session.execute(text("SELECT count(*) FROM items")).scalar_one()
        return orm, core

    add_item(engine)({"id": "a"}, LambdaContext())
    with pinlog.capture() as block:
        assert report({}, LambdaContext()) == (1, 1)
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN",
        "SELECT items.id, items.n FROM items",
        "SELECT count(*) FROM items",
        "COMMIT",
    ]


def test_an_invocation_that_never_uses_the_session_opens_and_sends_nothing(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_session(engine)
    def bad_request(event: Any, context: Any, session: Session) -> int:
        return 400

    with pinlog.capture() as cold:
        assert bad_request({}, LambdaContext()) == 400
    add_item(engine)({"id": "warm"}, LambdaContext())
    with pinlog.capture() as warm:
        assert bad_request({}, LambdaContext()) == 400
    for block in (cold, warm):
        assert block.statements(env_db.role) == []
        assert block.connections(env_db.role) == 0
    assert engine.pool.database.stats.connects == 1  # type: ignore[attr-defined]


def test_transaction_options_go_with_begin_never_as_set(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_session(engine, isolation_level="SERIALIZABLE", readonly=True)
    def count(event: Any, context: Any, session: Session) -> int:
        return int(session.execute(text("SELECT count(*) FROM items")).scalar_one())

    add_item(engine)({"id": "warm"}, LambdaContext())
    with pinlog.capture() as block:
        assert count({}, LambdaContext()) == 1
        add_item(engine)({"id": "next"}, LambdaContext())  # back to the defaults
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        "SELECT count(*) FROM items",
        "COMMIT",
        "BEGIN",
        INSERT,
        "COMMIT",
    ]


def test_a_commit_joins_the_invocation_and_a_later_rollback_undoes_only_what_followed(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    """``session.commit()`` sends no COMMIT (the invocation commits once, at its end); the
    session's next transaction runs in a savepoint, so its rollback keeps what was committed."""

    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="committed"))
        session.commit()
        session.add(Item(id="rolled-back"))
        session.flush()
        session.rollback()
        return "ok"

    add_item(engine)({"id": "warm"}, LambdaContext())
    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == "ok"
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", INSERT, "SAVEPOINT sp", INSERT, "ROLLBACK TO SAVEPOINT sp", "COMMIT",
    ]  # fmt: skip
    assert env_db.query("SELECT id FROM items ORDER BY id") == [("committed",), ("warm",)]


def test_a_commit_inside_the_handler_is_undone_when_the_handler_raises(
    engine: Engine, env_db: AppDb
) -> None:
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="committed-then-raised"))
        session.commit()
        raise RuntimeError("after the commit")

    with pytest.raises(RuntimeError, match="after the commit"):
        handler({}, LambdaContext())
    assert env_db.query("SELECT count(*) FROM items") == [(0,)]


# -- the controls: the same log sees what SQLAlchemy's own pools send ----------------------


def plain_engine(env_db: AppDb, **kwargs: Any) -> Engine:
    """SQLAlchemy on its own: ``postgresql+psycopg2`` with a password in ``connect_args``."""
    kw = env_db.pg.connect_kwargs(user=env_db.role, password=env_db.password, dbname=env_db.name,
                                  application_name="plain")  # fmt: skip
    return sqlalchemy.create_engine(
        "postgresql+psycopg2://", creator=lambda: psycopg2.connect(**kw), **kwargs
    )


def test_control_queuepool_with_pre_ping_pings_every_checkout(
    env_db: AppDb, pinlog: PinLog
) -> None:
    plain = plain_engine(env_db, poolclass=QueuePool, pool_pre_ping=True)
    with Session(plain) as session, session.begin():
        session.add(Item(id="cold"))
    with pinlog.capture() as block, Session(plain) as session, session.begin():
        session.add(Item(id="warm"))
    plain.dispose()
    assert shapes(block.statements(env_db.role)) == ["SELECT ?", "BEGIN", INSERT, "COMMIT"]


def test_control_nullpool_connects_every_time(env_db: AppDb, pinlog: PinLog) -> None:
    plain = plain_engine(env_db, poolclass=NullPool)
    connects: list[object] = []
    event.listen(plain, "connect", lambda dbapi, record: connects.append(dbapi))
    for name in ("cold", "warm"):
        with pinlog.capture() as block, Session(plain) as session, session.begin():
            session.add(Item(id=name))
    assert len(connects) == 2
    assert block.connections(env_db.role) == 1
    assert shapes(block.statements(env_db.role)) == ["BEGIN", INSERT, "COMMIT"]
