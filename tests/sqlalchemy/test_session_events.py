"""``with_session`` fires the session's commit and rollback events where they belong.

The scope, not ``session.commit()``, ends the transaction, so SQLAlchemy alone would never
fire ``before_commit`` / ``after_commit`` / ``after_rollback``. ``with_session`` fires them as
``session.commit()`` would: ``before_commit`` before the final flush (what it adds is
committed), ``after_commit`` once the ``COMMIT`` succeeded (another connection sees the
row), ``after_rollback`` once the scope rolled back. Joined into an outer decorator's scope,
only ``before_commit`` fires: the outer decorator commits after this one returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from lambda_db import ConnectionLostError, with_connection
from lambda_db.sqlalchemy import with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb

from .conftest import Item, ids

EVENTS = ("before_commit", "after_commit", "after_rollback")


@pytest.fixture
def seen(env_db: AppDb) -> Iterator[list[tuple[str, list[str]]]]:
    """The session events fired, each with the rows committed at that moment (read on a
    connection of the test's own)."""
    fired: list[tuple[str, list[str]]] = []
    listeners = []
    for name in EVENTS:

        def listener(session: Session, *args: Any, _name: str = name) -> None:
            fired.append((_name, ids(env_db)))

        event.listen(Session, name, listener)
        listeners.append((name, listener))
    yield fired
    for name, listener in listeners:
        event.remove(Session, name, listener)


def test_commit_events_fire_around_the_scopes_commit(
    engine: Engine, env_db: AppDb, seen: list[tuple[str, list[str]]]
) -> None:
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="x"))
        return "ok"

    assert handler({}, LambdaContext()) == "ok"
    assert seen == [("before_commit", []), ("after_commit", ["x"])]


def test_what_before_commit_adds_is_committed(engine: Engine, env_db: AppDb) -> None:
    def audit(session: Session) -> None:
        if not any(isinstance(o, Item) and o.id == "audit" for o in session.new):
            session.add(Item(id="audit"))

    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="x"))
        return "ok"

    event.listen(Session, "before_commit", audit)
    try:
        handler({}, LambdaContext())
    finally:
        event.remove(Session, "before_commit", audit)
    assert ids(env_db) == ["audit", "x"]


def test_a_raising_handler_fires_after_rollback_once_rolled_back(
    engine: Engine, env_db: AppDb, seen: list[tuple[str, list[str]]]
) -> None:
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="doomed"))
        session.flush()
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):
        handler({}, LambdaContext())
    assert seen == [("after_rollback", [])]


def test_an_unused_session_fires_nothing(
    engine: Engine, env_db: AppDb, seen: list[tuple[str, list[str]]]
) -> None:
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> int:
        return 400

    assert handler({}, LambdaContext()) == 400
    assert seen == []


def test_a_commit_whose_outcome_is_unknown_fires_neither(
    engine: Engine, env_db: AppDb, seen: list[tuple[str, list[str]]]
) -> None:
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> None:
        session.add(Item(id="unknown"))
        session.flush()
        env_db.terminate_all()  # the COMMIT meets a dead connection

    with pytest.raises(ConnectionLostError, match="during COMMIT") as info:
        handler({}, LambdaContext())
    assert info.value.outcome_unknown
    assert [name for name, _ in seen] == ["before_commit"]


def test_joined_into_with_connection_only_before_commit_fires(
    engine: Engine, env_db: AppDb, seen: list[tuple[str, list[str]]]
) -> None:
    @with_connection
    @with_session(engine)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="joined"))
        return "ok"

    assert handler({}, LambdaContext()) == "ok"
    assert seen == [("before_commit", [])]
    assert ids(env_db) == ["joined"]
