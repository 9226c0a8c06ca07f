"""Joined transactions end in LIFO order, or the invocation fails whole.

Inside an invocation scope every SQLAlchemy transaction but the first ``with_session``
session's runs in a savepoint of the invocation's one transaction, on one connection.
PostgreSQL's savepoints are a stack: ``RELEASE SAVEPOINT`` of one destroys those above it,
``ROLLBACK TO SAVEPOINT`` undoes everything after it, whoever did it. The review found that
transactions ended out of order lost or mis-attributed work: an outer ``Connection``'s
commit made the inner one's commit fail, an outer rollback silently undid an inner commit,
an inner rollback silently undid the outer one's later writes.

Every case here is a script of steps by two or three parties (``Connection`` s,
``Session`` s, ``engine.begin()`` blocks, ``with_session``'s own session) run on the real
server, with the outcome checked against what each party was told: either every row is
there exactly when its transaction reported a successful commit, or a
:class:`~lambda_db.LambdaDbError` was raised and the whole invocation rolled back (even when
the handler caught the error), leaving no transaction open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from lambda_db import LambdaDbError, TransactionOrderError, with_connection
from lambda_db.sqlalchemy import with_session
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

from .conftest import Item, ids
from .test_statements import shapes

INSERT = "INSERT INTO items (id) VALUES (:id)"

#: The kinds of transaction a party runs: a ``Connection`` (``engine.connect()``), a
#: ``Session`` of the handler's own, an ``engine.begin()`` block, ``with_session``'s session.
KINDS = ["connection", "session", "begin"]
OUTERS = [*KINDS, "injected"]


class Party:
    """One SQLAlchemy transaction of the handler's, driven step by step."""

    def __init__(self, name: str, kind: str, engine: Engine, injected: Session | None) -> None:
        self.name, self.kind, self.engine = name, kind, engine
        self.writes = 0
        self.pending: list[str] = []  # written since the transaction began
        self.told: list[str] = []  # rows whose commit this party was told succeeded
        self.conn: Connection | None = None
        self.session: Session | None = injected if kind == "injected" else None
        self.block: Any = None

    def write(self) -> None:
        """Insert rows: one (``do_execute``) the first time, then two (``executemany``)."""
        self.writes += 1
        count = 1 if self.writes == 1 else 2
        rows = [f"{self.name}{self.writes}{'ab'[i]}" for i in range(count)]
        if self.kind in ("session", "injected"):
            if self.session is None:
                self.session = Session(self.engine)
            self.session.add_all([Item(id=row) for row in rows])
            self.session.flush()
        else:
            if self.conn is None:
                if self.kind == "begin":
                    self.block = self.engine.begin()
                    self.conn = self.block.__enter__()
                else:
                    self.conn = self.engine.connect()
            params = [{"id": row} for row in rows]
            self.conn.execute(text(INSERT), params[0] if count == 1 else params)
        self.pending += rows

    def commit(self) -> None:
        rows, self.pending = self.pending, []
        if self.kind == "begin":
            block, self.block, self.conn = self.block, None, None
            block.__exit__(None, None, None)
        elif self.conn is not None:
            self.conn.commit()
        elif self.session is not None:
            self.session.commit()
        self.told += rows

    def rollback(self) -> None:
        self.pending = []
        if self.kind == "begin":
            block, self.block, self.conn = self.block, None, None
            error = RuntimeError("the block failed")
            assert not block.__exit__(RuntimeError, error, None)
        elif self.conn is not None:
            self.conn.rollback()
        elif self.session is not None:
            self.session.rollback()

    def close(self) -> None:
        """At the handler's end (for parties an error left open)."""
        self.pending = []
        if self.block is not None:
            block, self.block = self.block, None
            with contextlib.suppress(Exception):
                block.__exit__(RuntimeError, RuntimeError("closing"), None)
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        if self.session is not None and self.kind != "injected":
            with contextlib.suppress(Exception):
                self.session.close()


#: name -> steps ("A+": A writes; "A.commit", "A.rollback"); parties begin in name order.
SCENARIOS = {
    "lifo: inner commits, outer commits": "A+ B+ B.commit A.commit",
    "lifo: inner rolls back, outer commits": "A+ B+ B.rollback A.commit",
    "lifo: both roll back": "A+ B+ B.rollback A.rollback",
    "lifo: the outer writes under the inner, which commits": "A+ B+ A+ B.commit A.commit",
    "lifo: three deep": "A+ B+ C+ C.rollback B+ B.commit A+ A.commit",
    "the outer commits first": "A+ B+ A.commit B.commit",
    "the outer commits first, the inner rolls back": "A+ B+ A.commit B.rollback",
    "the outer rolls back first": "A+ B+ A.rollback B.commit",
    "the outer rolls back first, then the inner": "A+ B+ A.rollback B.rollback",
    "the outer writes under the inner, which rolls back": "A+ B+ A+ B.rollback A.commit",
    "the inner commits, the outer rolls it back": "A+ B+ B.commit A.rollback",
    "the middle ends first": "A+ B+ C+ B.commit C.commit A.commit",
    "the outer writes under two, the top rolls back": "A+ B+ C+ A+ C.rollback B.commit A.commit",
}

#: Scenarios whose work cannot end up as each party was told: the invocation must fail.
DOOMED = {
    "the outer commits first",
    "the outer commits first, the inner rolls back",
    "the outer rolls back first",
    "the outer rolls back first, then the inner",
    "the outer writes under the inner, which rolls back",
    "the inner commits, the outer rolls it back",
    "the middle ends first",
    "the outer writes under two, the top rolls back",
}

#: With ``with_session``'s own session as the outer party, its commit sends nothing (the
#: scope commits), so ending it first loses nothing.
FINE_FOR_INJECTED = {
    "the outer commits first",
    "the outer commits first, the inner rolls back",
}


def run(
    engine: Engine, outer: str, inner: str, steps: str
) -> tuple[Callable[[], Any], dict[str, Party], list[BaseException]]:
    """A handler running ``steps``, its parties, and the errors the steps raised (caught,
    as a handler that logs and carries on would)."""
    parties: dict[str, Party] = {}
    errors: list[BaseException] = []

    def body(session: Session | None) -> str:
        parties.clear()
        kinds = {"A": outer, "B": inner, "C": inner}
        for name, kind in kinds.items():
            parties[name] = Party(name.lower(), kind, engine, session)
        try:
            for step in steps.split():
                party = parties[step[0]]
                try:
                    if step.endswith("+"):
                        party.write()
                    elif step.endswith(".commit"):
                        party.commit()
                    else:
                        party.rollback()
                except Exception as exc:
                    errors.append(exc)
        finally:
            for party in reversed(parties.values()):
                party.close()
        return "ok"

    if outer == "injected":

        @with_session(engine)
        def session_handler(event: Any, context: Any, session: Session) -> str:
            return body(session)

        return lambda: session_handler({}, LambdaContext()), parties, errors

    @with_connection
    def handler(event: Any, context: Any) -> str:
        return body(None)

    return lambda: handler({}, LambdaContext()), parties, errors


@pytest.mark.parametrize("inner", KINDS)
@pytest.mark.parametrize("outer", OUTERS)
def test_work_ends_as_each_party_was_told_or_the_invocation_fails(
    warm: Engine, env_db: AppDb, outer: str, inner: str, subtests: pytest.Subtests
) -> None:
    """Every scenario, one subtest each (one database for them all: it is the slow part)."""
    for scenario, steps in SCENARIOS.items():
        with subtests.test(scenario):
            env_db.query("DELETE FROM items")
            check(warm, env_db, outer, inner, scenario, steps)


def check(engine: Engine, env_db: AppDb, outer: str, inner: str, scenario: str, steps: str) -> None:
    invoke, parties, errors = run(engine, outer, inner, steps)
    doomed = scenario in DOOMED and not (outer == "injected" and scenario in FINE_FOR_INJECTED)
    if doomed:
        with pytest.raises(TransactionOrderError) as info:
            invoke()
        assert any(isinstance(error, TransactionOrderError) for error in errors), errors
        assert "LIFO" in str(info.value)
        assert ids(env_db) == []  # nothing half-committed
    else:
        assert invoke() == "ok"
        assert errors == []
        told = sorted(row for party in parties.values() for row in party.told)
        assert ids(env_db) == told
    assert env_db.backends("idle in transaction") == []
    # Nothing of a failed invocation is left for the next one.
    invoke, parties, errors = run(engine, outer, inner, "A+ B+ B.commit A.commit")
    env_db.query("DELETE FROM items")
    assert invoke() == "ok"
    assert errors == []
    assert ids(env_db) == ["a1a", "b1a"]


# -- what is sent ------------------------------------------------------------------------


def test_nested_lifo_transactions_send_nothing_extra(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    @with_connection
    def handler(event: Any, context: Any) -> str:
        with warm.connect() as outer:
            outer.execute(text(INSERT), {"id": "outer"})
            with warm.begin() as inner:
                inner.execute(text(INSERT), {"id": "inner"})
            outer.execute(text(INSERT), {"id": "outer2"})
            outer.commit()
        return "ok"

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == "ok"
    insert = "INSERT INTO items (id) VALUES (?)"
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", "SAVEPOINT sp", insert, "SAVEPOINT sp", insert, "RELEASE SAVEPOINT sp",
        insert, "RELEASE SAVEPOINT sp", "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["inner", "outer", "outer2"]


def test_with_session_with_a_helper_connection_sends_nothing_extra(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    """The stack costs nothing on the server: the session's statements under a committed
    helper's savepoint are plain statements."""

    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> int:
        session.add(Item(id="orm"))
        session.flush()
        with warm.begin() as conn:
            conn.execute(text(INSERT), {"id": "core"})
        session.add(Item(id="orm2"))
        return 201

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == 201
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", "INSERT INTO items (id, n) VALUES (?, ?)", "SAVEPOINT sp",
        "INSERT INTO items (id) VALUES (?)", "RELEASE SAVEPOINT sp",
        "INSERT INTO items (id, n) VALUES (?, ?)", "COMMIT",
    ]  # fmt: skip
    assert ids(env_db) == ["core", "orm", "orm2"]


# -- the error ---------------------------------------------------------------------------


def test_an_out_of_order_commit_says_what_to_do_and_sends_nothing(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    caught: list[LambdaDbError] = []

    @with_connection
    def handler(event: Any, context: Any) -> str:
        outer = warm.connect()
        outer.execute(text(INSERT), {"id": "outer"})
        inner = warm.connect()
        inner.execute(text(INSERT), {"id": "inner"})
        try:
            outer.commit()
        except LambdaDbError as exc:
            caught.append(exc)  # and the handler goes on as if nothing happened
        inner.commit()
        return "ok"

    with pinlog.capture() as block, pytest.raises(TransactionOrderError) as info:
        handler({}, LambdaContext())
    assert len(caught) == 1
    message = str(caught[0])
    assert "LIFO" in message
    assert "commit" in message
    assert "close" in message
    assert info.value is caught[0]  # the scope raises it again, having rolled back
    insert = "INSERT INTO items (id) VALUES (?)"
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", "SAVEPOINT sp", insert, "SAVEPOINT sp", insert, "RELEASE SAVEPOINT sp",
        "ROLLBACK",
    ]  # fmt: skip
    assert ids(env_db) == []


def test_a_statement_without_parameters_under_an_open_savepoint_is_seen(
    warm: Engine, env_db: AppDb
) -> None:
    """``do_execute_no_params`` (the ``no_parameters`` execution option) is watched too."""

    @with_connection
    def handler(event: Any, context: Any) -> str:
        with warm.connect() as outer:
            outer.execute(text(INSERT), {"id": "outer"})
            inner = warm.connect()
            inner.execute(text(INSERT), {"id": "inner"})
            outer.execution_options(no_parameters=True).exec_driver_sql(
                "INSERT INTO items (id) VALUES ('outer2')"
            )
            with contextlib.suppress(LambdaDbError):
                inner.rollback()
            inner.close()
            outer.commit()
        return "ok"

    with pytest.raises(TransactionOrderError, match="LIFO"):
        handler({}, LambdaContext())
    assert ids(env_db) == []
    assert env_db.backends("idle in transaction") == []


# -- begin_nested() savepoints inside joined transactions ---------------------------------


def test_a_nested_savepoint_rolled_back_over_a_joined_commit_is_refused(
    warm: Engine, env_db: AppDb
) -> None:
    """``begin_nested()`` inside a Connection, a second Connection commits into it, then the
    nested savepoint rolls back: that would undo the second one's committed rows."""
    told: list[str] = []
    caught: list[BaseException] = []

    @with_connection
    def handler(event: Any, context: Any) -> str:
        with warm.connect() as a:
            a.execute(text(INSERT), {"id": "a1"})
            nested = a.begin_nested()
            with warm.connect() as b:
                b.execute(text(INSERT), {"id": "b1"})
                b.commit()
                told.append("b1")
            try:
                nested.rollback()
            except TransactionOrderError as exc:
                caught.append(exc)
            a.commit()
            told.append("a1")
        return "ok"

    with pytest.raises(TransactionOrderError) as info:
        handler({}, LambdaContext())
    assert caught == [info.value]
    assert "begin_nested()" in str(info.value)
    assert ids(env_db) == []
    assert env_db.backends("idle in transaction") == []


def test_with_sessions_nested_savepoint_rolled_back_over_a_helper_is_refused(
    warm: Engine, env_db: AppDb
) -> None:
    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="orm"))
        session.flush()
        nested = session.begin_nested()
        session.add(Item(id="orm-nested"))
        session.flush()  # SQLAlchemy sends the nested SAVEPOINT at the session's next use
        with warm.begin() as conn:
            conn.execute(text(INSERT), {"id": "helper"})
        with contextlib.suppress(TransactionOrderError):
            nested.rollback()
        return "ok"

    with pytest.raises(TransactionOrderError, match="with_session's session"):
        handler({}, LambdaContext())
    assert ids(env_db) == []


def test_nested_savepoints_of_its_own_work_roll_back_and_release(
    warm: Engine, env_db: AppDb, pinlog: PinLog
) -> None:
    """Only its own work in range: ``begin_nested()`` works as SQLAlchemy's, nothing extra
    is sent."""

    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> str:
        with warm.connect() as conn:
            conn.execute(text(INSERT), {"id": "kept"})
            with conn.begin_nested() as nested:
                conn.execute(text(INSERT), {"id": "undone"})
                nested.rollback()
            with conn.begin_nested():
                conn.execute(text(INSERT), {"id": "released"})
            conn.commit()
        with session.begin_nested() as nested:
            session.add(Item(id="orm-undone"))
            session.flush()
            nested.rollback()
        session.add(Item(id="orm"))
        return "ok"

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == "ok"
    assert ids(env_db) == ["kept", "orm", "released"]
    statements = shapes(block.statements(env_db.role))
    assert statements[0] == "BEGIN"
    assert statements[-1] == "COMMIT"
    assert statements.count("ROLLBACK") == 0


def test_a_nested_savepoint_released_under_an_open_connection_is_refused(
    warm: Engine, env_db: AppDb
) -> None:
    @with_connection
    def handler(event: Any, context: Any) -> str:
        a = warm.connect()
        a.execute(text(INSERT), {"id": "a1"})
        nested = a.begin_nested()
        b = warm.connect()
        b.execute(text(INSERT), {"id": "b1"})
        with contextlib.suppress(TransactionOrderError):
            nested.commit()  # RELEASE would end b's savepoint too
        b.commit()
        a.commit()
        return "ok"

    with pytest.raises(TransactionOrderError, match="released"):
        handler({}, LambdaContext())
    assert ids(env_db) == []


# -- the error names each party ------------------------------------------------------------


def test_the_error_names_each_party_by_kind_in_the_order_they_began(
    warm: Engine, env_db: AppDb
) -> None:
    """The order is when each transaction began (its first statement), not when its object
    was made: a Session that only ``add()`` ed begins at its flush."""
    caught: list[TransactionOrderError] = []

    @with_connection
    def handler(event: Any, context: Any) -> str:
        session = Session(warm)
        session.add(Item(id="orm"))  # made first, begins at its flush, after the Connection
        conn = warm.connect()
        conn.execute(text(INSERT), {"id": "core"})
        session.flush()
        try:
            conn.commit()  # began first: the Session is open above it
        except TransactionOrderError as exc:
            caught.append(exc)
        session.close()
        conn.close()
        return "ok"

    with pytest.raises(TransactionOrderError):
        handler({}, LambdaContext())
    message = str(caught[0])
    assert message.startswith("a Connection (engine.connect() or engine.begin()) (begun 1st")
    assert "(a Session (begun 2nd of those open" in message
    assert ids(env_db) == []


# -- joined transactions left open at the handler's end -----------------------------------


def test_a_connection_left_open_is_rolled_back_as_its_close_would(
    warm: Engine, env_db: AppDb, pinlog: PinLog, caplog: pytest.LogCaptureFixture
) -> None:
    left: list[Connection] = []

    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> str:
        session.add(Item(id="orm"))
        session.flush()
        conn = warm.connect()
        conn.execute(text(INSERT), {"id": "never-committed"})
        left.append(conn)
        return "ok"

    with pinlog.capture() as block:
        assert handler({}, LambdaContext()) == "ok"
    assert ids(env_db) == ["orm"]
    assert "left open" in caplog.text
    assert shapes(block.statements(env_db.role)) == [
        "BEGIN", "INSERT INTO items (id, n) VALUES (?, ?)", "SAVEPOINT sp",
        "INSERT INTO items (id) VALUES (?)", "ROLLBACK TO SAVEPOINT sp", "COMMIT",
    ]  # fmt: skip
    left[0].close()  # sends nothing to the next invocation's transaction
    assert env_db.backends("idle in transaction") == []


def test_a_connection_left_open_under_others_work_dooms_the_invocation(
    warm: Engine, env_db: AppDb
) -> None:
    @with_connection
    def handler(event: Any, context: Any) -> str:
        outer = warm.connect()  # never committed nor closed
        outer.execute(text(INSERT), {"id": "outer"})
        with warm.begin() as inner:  # commits into outer's savepoint
            inner.execute(text(INSERT), {"id": "inner"})
        return "ok"

    with pytest.raises(TransactionOrderError, match="left open"):
        handler({}, LambdaContext())
    assert ids(env_db) == []
    assert env_db.backends("idle in transaction") == []


def test_a_connection_left_open_beneath_with_sessions_session_dooms_the_invocation(
    warm: Engine, env_db: AppDb
) -> None:
    @with_session(warm)
    def handler(event: Any, context: Any, session: Session) -> str:
        conn = warm.connect()  # never committed nor closed
        conn.execute(text(INSERT), {"id": "core"})
        session.add(Item(id="orm"))
        session.flush()  # the session's transaction begins above the Connection's
        return "ok"

    with pytest.raises(TransactionOrderError, match="left open"):
        handler({}, LambdaContext())
    assert ids(env_db) == []
