"""``with_session``: its shapes, and stacked with ``with_connection``: one transaction."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import sqlalchemy
from aws_lambda_powertools import Logger
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import lambda_db
from lambda_db import ConfigurationError, with_connection
from lambda_db.sqlalchemy import create_engine, with_session
from lambda_db.sqlalchemy._engine import default_engine
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

from .conftest import Item, ids, raw_insert
from .test_statements import FIRST_CONNECT, INSERT, shapes

RAW_INSERT = "INSERT INTO items (id) VALUES (?)"


def test_bare_decorator_uses_the_default_database(env_db: AppDb) -> None:
    @with_session
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id=event["id"]))
        return "ok"

    assert handler({"id": "bare"}, LambdaContext()) == "ok"
    assert ids(env_db) == ["bare"]
    assert lambda_db.default_database().stats.commits == 1


def test_the_default_engine_follows_lambda_db_reset(env_db: AppDb) -> None:
    first = default_engine()
    assert default_engine() is first
    lambda_db.reset()
    assert default_engine() is not first


def test_options_and_the_injected_name(engine: Engine, env_db: AppDb) -> None:
    @with_session(engine, inject="db")
    def handler(event: Any, context: Any, db: Session) -> int:
        db.add(Item(id="named", n=7))
        db.flush()
        return int(db.execute(text("SELECT sum(n) FROM items")).scalar_one())

    assert handler({}, LambdaContext()) == 7
    assert ids(env_db) == ["named"]


def test_stacks_with_powertools_in_any_order(engine: Engine, env_db: AppDb) -> None:
    logger = Logger(service="sqla-test")

    @logger.inject_lambda_context
    @with_session(engine)
    def outer(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id=event["id"]))
        return "ok"

    @with_session(engine)
    @logger.inject_lambda_context
    def inner(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id=event["id"]))
        return "ok"

    assert outer({"id": "outer"}, LambdaContext()) == "ok"
    assert inner({"id": "inner"}, LambdaContext()) == "ok"
    assert ids(env_db) == ["inner", "outer"]


def test_wrong_engine_or_inject_fails_when_decorating(app_db: AppDb) -> None:
    plain = sqlalchemy.create_engine("postgresql+psycopg2://")
    with pytest.raises(ConfigurationError, match=r"not made by lambda_db\.sqlalchemy") as info:
        with_session(plain)
    assert info.value.variable == "engine"
    with pytest.raises(ConfigurationError, match=r"engine from lambda_db\.sqlalchemy"):
        with_session("postgresql://")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError) as info:
        with_session(inject="not a name")
    assert info.value.variable == "inject"


# -- stacked with with_connection: one transaction -------------------------------------------


def stacked(engine: Engine, *, fail: bool = False) -> Any:
    @with_connection
    @with_session(engine)
    def handler(event: dict[str, Any], context: Any, session: Session) -> str:
        raw_insert(f"raw-{event['id']}")
        session.add(Item(id=f"orm-{event['id']}"))
        if fail:
            session.flush()
            raise RuntimeError("after both writes")
        return "ok"

    return handler


def test_inside_with_connection_one_transaction_one_commit(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    handler = stacked(engine)
    assert handler({"id": "cold"}, LambdaContext()) == "ok"
    with pinlog.capture() as block:
        assert handler({"id": "warm"}, LambdaContext()) == "ok"
    # The session began after with_connection's work: it runs in a savepoint of the one
    # transaction (a rollback of the session's would not undo the raw insert).
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", RAW_INSERT, "SAVEPOINT sp", INSERT, "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["orm-cold", "orm-warm", "raw-cold", "raw-warm"]
    db = lambda_db.default_database()
    assert (db.stats.invocations, db.stats.commits) == (2, 2)


def test_inside_with_connection_a_raise_rolls_back_both(engine: Engine, env_db: AppDb) -> None:
    stacked(engine)({"id": "warm"}, LambdaContext())
    with pytest.raises(RuntimeError, match="after both writes"):
        stacked(engine, fail=True)({"id": "doomed"}, LambdaContext())
    assert ids(env_db) == ["orm-warm", "raw-warm"]
    assert env_db.backends("idle in transaction") == []


def test_the_first_connect_inside_the_handlers_transaction_keeps_it(
    engine: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    """The environment's first invocation writes through the connection before SQLAlchemy
    first uses the engine: the dialect's reads join that transaction, and its rollback is
    not sent."""
    with pinlog.capture() as block:
        assert stacked(engine)({"id": "first"}, LambdaContext()) == "ok"
    learning = [s for s in FIRST_CONNECT[engine.dialect.driver] if s not in ("BEGIN", "ROLLBACK")]
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", RAW_INSERT, *learning, "SAVEPOINT sp", INSERT, "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["orm-first", "raw-first"]


def test_joining_with_different_transaction_options_is_refused(
    engine: Engine, env_db: AppDb
) -> None:
    @with_connection
    @with_session(engine, isolation_level="SERIALIZABLE")
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="never"))

    with pytest.raises(ConfigurationError, match=re.escape("outer decorator")) as info:
        handler({}, LambdaContext())
    assert info.value.variable == "isolation_level"
    assert ids(env_db) == []


def test_two_sessions_stacked_share_the_transaction(engine: Engine, env_db: AppDb) -> None:
    @with_session(engine, inject="outer")
    @with_session(engine, inject="inner")
    def handler(event: Any, context: Any, outer: Session, inner: Session) -> list[str]:
        inner.add(Item(id="inner"))
        inner.flush()
        return list(outer.scalars(select(Item.id)))

    assert handler({}, LambdaContext()) == ["inner"]
    assert ids(env_db) == ["inner"]


def test_with_connection_inside_with_session_one_transaction(engine: Engine, env_db: AppDb) -> None:
    @with_session(engine)
    @with_connection
    def handler(event: dict[str, Any], context: Any, session: Session) -> str:
        raw_insert("raw")
        session.add(Item(id="orm"))
        return "ok"

    assert handler({}, LambdaContext()) == "ok"
    assert ids(env_db) == ["orm", "raw"]


def test_an_engine_per_database(app_db: AppDb, env_db: AppDb) -> None:
    db = lambda_db.Database(app_db.settings)
    engine = create_engine(db)

    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="explicit"))

    handler({}, LambdaContext())
    assert db.stats.commits == 1
    assert lambda_db.default_database().stats.invocations == 0
    engine.dispose()


def test_a_caught_failed_flush_commits_nothing_of_the_session_and_says_so(
    engine: Engine, env_db: AppDb, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler answers 409 for a duplicate key: SQLAlchemy rolled the session's
    transaction back when the flush failed; the warning says its pending work is gone."""
    env_db.query("INSERT INTO items (id) VALUES ('dup')")

    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> int:
        session.add(Item(id="before"))
        session.flush()
        session.add(Item(id="dup"))
        try:
            session.flush()
        except IntegrityError:
            return 409
        return 201

    with caplog.at_level(logging.WARNING, logger="lambda_db.sqlalchemy._session"):
        assert handler({}, LambdaContext()) == 409
    assert "failed flush" in caplog.text
    assert ids(env_db) == ["dup"]
    assert env_db.backends("idle in transaction") == []
