"""Options that would end the invocation's transaction, outlive it, or pin RDS Proxy.

The ``isolation_level`` execution option made psycopg2 roll back the transaction in
progress (``with_connection``'s raw insert was lost) and would stay on the connection after
the invocation: it is refused, with the ``postgresql_readonly`` / ``postgresql_deferrable``
options, wherever SQLAlchemy accepts it. ``yield_per`` / ``stream_results`` sent
``DECLARE ... CURSOR`` (on RDS Proxy's pinning list): results are buffered client-side. The
transaction's characteristics belong to ``with_session`` / ``with_connection``, checked
when decorating, in any case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

import lambda_db
from lambda_db import ConfigurationError, with_connection
from lambda_db.sqlalchemy import create_engine, with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

from .conftest import Item, ids, raw_insert
from .test_statements import shapes

OPTIONS = [
    ("isolation_level", "SERIALIZABLE", "with_session(isolation_level=...)"),
    ("isolation_level", "AUTOCOMMIT", "with_connection(autocommit=True)"),
    ("postgresql_readonly", True, "with_session(readonly=True)"),
    ("postgresql_deferrable", True, "with_session(deferrable=True)"),
]


@pytest.mark.parametrize(("name", "value", "instead"), OPTIONS)
def test_transaction_execution_options_are_refused_on_the_engine(
    app_db: AppDb, name: str, value: Any, instead: str
) -> None:
    db = lambda_db.Database(app_db.settings)
    with pytest.raises(ConfigurationError, match=re.escape(instead)) as info:
        create_engine(db, execution_options={name: value})
    assert info.value.variable == name
    engine = create_engine(db)
    with pytest.raises(ConfigurationError, match=re.escape(instead)):
        engine.execution_options(**{name: value})
    assert db.stats.connects == 0  # refused before anything connected


def _on_a_connection(engine: Engine, name: str, value: Any) -> None:
    with engine.connect() as conn:
        conn.execution_options(**{name: value})


def _on_a_session(engine: Engine, name: str, value: Any) -> None:
    with Session(engine) as session:
        session.connection(execution_options={name: value})


@pytest.mark.parametrize("where", [_on_a_connection, _on_a_session])
@pytest.mark.parametrize(("name", "value", "instead"), OPTIONS)
def test_transaction_execution_options_are_refused_inside_an_invocation_and_lose_nothing(
    engine: Engine,
    env_db: AppDb,
    where: Callable[[Engine, str, Any], None],
    name: str,
    value: Any,
    instead: str,
) -> None:
    """psycopg2 applied ``isolation_level`` by rolling the invocation's transaction back:
    refused, the raw insert before it survives (the handler caught the error)."""

    @with_connection
    def handler(event: Any, context: Any) -> str:
        raw_insert("raw")
        with pytest.raises(ConfigurationError, match=re.escape(instead)) as info:
            where(engine, name, value)
        assert info.value.variable == name
        return "ok"

    assert handler({}, LambdaContext()) == "ok"
    assert ids(env_db) == ["raw"]
    assert env_db.backends("idle in transaction") == []


def test_what_the_engine_is_made_with_still_applies(env_db: AppDb) -> None:
    """Other execution options pass through (here: a schema translation map)."""
    engine = create_engine(
        execution_options={"schema_translate_map": {"app": None}, "logging_token": "t"}
    )
    try:
        with engine.connect() as conn:
            assert conn.get_execution_options()["logging_token"] == "t"
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


# -- no server-side cursors: nothing that pins -----------------------------------------------


@pytest.mark.parametrize("yield_per", [True, False])
def test_streaming_results_are_buffered_without_a_cursor_that_pins(
    engine: Engine, env_db: AppDb, pinlog: PinLog, yield_per: bool
) -> None:
    """The pin recorder (enforce) fails this test if a ``DECLARE`` reaches the server."""
    env_db.query("INSERT INTO items (id) SELECT 'i' || g FROM generate_series(1, 25) AS g")
    assert engine.dialect.supports_server_side_cursors is False

    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> int:
        if yield_per:
            return sum(1 for _ in session.scalars(select(Item).execution_options(yield_per=10)))
        conn: Connection = session.connection()
        result = conn.execution_options(stream_results=True, max_row_buffer=5).execute(
            text("SELECT id FROM items")
        )
        return sum(len(rows) for rows in result.partitions(10))

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == 25
    statements = shapes(block.statements(env_db.role))
    assert not [s for s in statements if s.upper().startswith(("DECLARE", "FETCH"))], statements
    assert block.findings() == []


# -- with_session's own options ------------------------------------------------------------


def test_an_unknown_isolation_level_is_refused_when_decorating(app_db: AppDb) -> None:
    with pytest.raises(ConfigurationError, match="isolation_level must be one of") as info:
        with_session(isolation_level="SERIALISABLE")
    assert info.value.variable == "isolation_level"


@pytest.mark.parametrize(("outer", "inner"), [("serializable", "SERIALIZABLE"),
                                              ("Repeatable Read", "repeatable read")])  # fmt: skip
def test_joining_compares_the_isolation_level_in_any_case(
    engine: Engine, env_db: AppDb, pinlog: PinLog, outer: str, inner: str
) -> None:
    @with_connection(isolation_level=outer)
    @with_session(engine, isolation_level=inner)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="joined"))
        return "ok"

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == "ok"
    assert shapes(block.statements(env_db.role))[0] == f"BEGIN ISOLATION LEVEL {inner.upper()}"
    assert ids(env_db) == ["joined"]
