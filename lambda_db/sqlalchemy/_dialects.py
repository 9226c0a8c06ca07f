"""SQLAlchemy's PostgreSQL dialects, for connections an invocation scope owns.

SQLAlchemy assumes every ``Connection`` and ``Session`` has a transaction of its own to
commit or roll back. On lambda-db's one connection, inside ``with_connection`` /
``with_session`` / ``db.invocation()``, there is one transaction, the invocation's, and the
scope ends it: ``COMMIT`` when the handler returns, ``ROLLBACK`` when it raises. These
subclasses of SQLAlchemy's ``psycopg2`` and ``psycopg`` dialects make every SQLAlchemy
transaction on the connection *join* it (the rule, stated once in :func:`joined`):

* **the invocation's transaction itself**: a ``with_session`` session's transaction that
  begins while the invocation's transaction is still empty. Its commit sends nothing (the
  scope commits, once); its rollback (``session.rollback()``, a failed flush) rolls the
  invocation back;
* **a savepoint in it**: every other transaction (a ``Connection``, a ``Session`` of the
  handler's own, ``engine.begin()``, a session's transaction that begins after others'
  work). It begins with ``SAVEPOINT``; commit is ``RELEASE SAVEPOINT``; rollback, or a
  close without commit, is ``ROLLBACK TO SAVEPOINT``: it undoes its own work and never
  anyone else's.

**LIFO.** The savepoints are PostgreSQL's, a stack on the one connection: ``RELEASE`` of
one ends those above it, ``ROLLBACK TO`` undoes everything after it, whoever did it. So
joined transactions must end last-begun-first, and the invocation keeps them on a stack
(``Invocation.joined``) to check it, in the order they *began*: at their first statement
(a ``Session`` that only ``add()`` ed has not begun; its flush, autoflush included, begins
it), not when the ``Connection`` or ``Session`` object was made. Ending the innermost one
works as above. Ending one that has others open above it (an outer ``Session`` committing,
or an outer ``Connection`` rolling back, while an inner ``Connection`` is still open),
rolling back ``with_session``'s session under an open savepoint, or rolling back one whose
range holds others' work (an outer transaction ran a statement while it was open: reads
count, the dialect cannot tell them apart; or an inner one committed into it, and was told
so) sends nothing and raises :class:`~lambda_db.TransactionOrderError`, naming each party
(``with_session``'s session, a ``Session``, a ``Connection``), and *dooms* the invocation:
the scope rolls everything back when the handler ends and raises the error again, even if
the handler caught it. Nothing is half-committed. The fix is in the handler: commit or
close the ``Connection`` / ``Session`` / ``engine.begin()`` block begun last before one
begun earlier ends (``conn.commit()`` before ``close()`` to keep its work), and do not use
the earlier one meanwhile.

A ``begin_nested()`` savepoint (``sa_savepoint_N``) lies in its transaction's range and is
checked the same way: its ``RELEASE`` or ``ROLLBACK TO`` is refused (the invocation doomed)
while a transaction begun after its own is open, and its ``ROLLBACK TO`` when others' work
landed in its range after it began (a ``Connection`` that committed meanwhile).

At the end of a successful scope, a joined ``Connection`` or ``Session`` left open (neither
committed nor closed) is rolled back, innermost first, as its close would have (``ROLLBACK
TO SAVEPOINT``, with a WARNING): its work is not committed. When that would undo another's
work (others' work in its range, or ``with_session``'s session begun above it), the
invocation is doomed instead. ``with_session``'s session is the scope's to commit. Nothing
is sent when nothing is left open.

**Not seen:** statements sent on lambda-db's connection itself
(``lambda_db.get_connection().cursor()``, :func:`lambda_db.process_batch`'s raw
``SAVEPOINT`` s) do not pass through SQLAlchemy, so they are on no stack: a joined
transaction open while they run holds them in its range, and its rollback (or a close
without commit, or being left open) undoes them too, silently. Send raw statements while
no ``Connection`` or ``Session`` of the handler's is open, or through one
(``conn.exec_driver_sql(...)``).

So nothing SQLAlchemy does ends the invocation's transaction early (``engine.begin()``
inside ``with_connection`` no longer commits half an invocation) and no close discards
another's work (a ``Connection`` opened inside ``with_session`` no longer rolls the session
back). Outside a scope SQLAlchemy's own behaviour holds. In an ``autocommit=True`` scope
every statement commits itself, so there is nothing to join.

Also:

* ``isolation_level``, ``postgresql_readonly`` and ``postgresql_deferrable`` execution
  options are refused (:class:`~lambda_db.ConfigurationError`): the drivers apply them by
  rolling back the transaction in progress (psycopg2) or refusing mid-transaction, and
  they would outlive the invocation. ``with_session(isolation_level=...)`` and
  ``with_connection(isolation_level=..., autocommit=...)`` send them with ``BEGIN``;
* no server-side cursors (``supports_server_side_cursors = False``): ``yield_per`` and
  ``stream_results`` buffer client-side instead of sending ``DECLARE ... CURSOR``, which
  pins RDS Proxy;
* the rollback after the first connect is not sent when the connection was already in a
  transaction (the handler's own, begun before SQLAlchemy's first use of the engine): the
  learning statements are plain reads and stay inside it;
* the default isolation level is read from ``default_transaction_isolation`` (the server's
  or role's default), not from the transaction in progress, whose level lambda-db may have
  set for this invocation.

What the dialects send at the engine's first connect, checked against the server's log
(``tests/sqlalchemy``): ``select pg_catalog.version()``, ``select current_schema()``,
``SHOW default_transaction_isolation``, ``show standard_conforming_strings`` and the lookup
of the ``hstore`` type: reads, none of them on RDS Proxy's pinning list. Later connections
send nothing when they open.

Example::

    >>> from sqlalchemy.engine import URL
    >>> URL.create(DIALECTS["psycopg2"]).get_dialect().__name__
    'Psycopg2Dialect'
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

from lambda_db._driver import IDLE, get_driver
from lambda_db._ending import on_left_open
from lambda_db.errors import ConfigurationError, TransactionOrderError

if TYPE_CHECKING:
    from lambda_db._invocation import Invocation
    from lambda_db.database import Database

__all__ = [
    "DIALECTS",
    "OWNER",
    "REFUSED_OPTIONS",
    "Psycopg2Dialect",
    "PsycopgDialect",
    "Joined",
    "joined",
    "releasing",
]

#: lambda-db's ``DB_DRIVER`` -> the SQLAlchemy driver name (``URL.create(...)``).
DIALECTS = {
    "psycopg2": "postgresql+lambda_db_psycopg2",
    "psycopg": "postgresql+lambda_db_psycopg",
}

#: The execution option that marks ``with_session``'s connections (see :func:`joined`).
OWNER = "lambda_db_session"

#: Execution options refused, and what to use instead.
REFUSED_OPTIONS = {
    "isolation_level": (
        "with_session(isolation_level=...) or with_connection(isolation_level=...), or "
        "with_connection(autocommit=True) for AUTOCOMMIT: sent with BEGIN, for one invocation"
    ),
    "postgresql_readonly": (
        "with_session(readonly=True) or with_connection(readonly=True): sent with BEGIN"
    ),
    "postgresql_deferrable": (
        "with_session(deferrable=True) or with_connection(deferrable=True): sent with BEGIN"
    ),
}

logger = logging.getLogger(__name__)

_local = threading.local()
_savepoints = itertools.count(1)


@contextlib.contextmanager
def releasing() -> Iterator[None]:
    """Inside the block, this thread's SQLAlchemy commits and rollbacks are not sent.

    For ending a ``Session`` whose transaction an invocation scope has ended, or will end.
    """
    depth = getattr(_local, "releasing", 0)
    _local.releasing = depth + 1
    try:
        yield
    finally:
        _local.releasing = depth


#: What :class:`Joined` calls each kind of party in errors.
SESSION_OF_SCOPE = "with_session's session"
SESSION = "a Session"
CONNECTION = "a Connection (engine.connect() or engine.begin())"


class Joined:
    """How one SQLAlchemy transaction joined an invocation's (kept on its pool proxy, which
    SQLAlchemy makes for each checkout: one per ``Connection``, never shared by two).

    While it is open it is on its invocation's stack, :attr:`Invocation.joined
    <lambda_db._invocation.Invocation.joined>` (innermost last), in the order the
    transactions *began* (their first statement), not the order their ``Connection`` or
    ``Session`` objects were made.
    """

    __slots__ = ("kind", "nested", "others", "savepoint", "scope")

    def __init__(self, scope: Invocation, savepoint: str | None, kind: str = CONNECTION) -> None:
        self.scope = scope
        #: ``None``: it is the invocation's transaction; else the savepoint it runs in.
        self.savepoint = savepoint
        #: Who it is, for errors: :data:`SESSION_OF_SCOPE`, :data:`SESSION` or
        #: :data:`CONNECTION`.
        self.kind = kind
        #: How many times work that is not its own landed in its range: statements of a
        #: transaction beneath it that ran while it was open, or a transaction above it
        #: that committed (released its savepoint into it). Its rollback would undo that
        #: work too, so it is refused while this is not 0.
        self.others = 0
        #: Its open ``begin_nested()`` savepoints: name -> :attr:`others` when it began
        #: (``None`` until the first). Rolling one back is refused if :attr:`others` moved.
        self.nested: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"Joined({self.scope!r}, savepoint={self.savepoint!r}, others={self.others})"


def joined(database: Database | None, fairy: Any, status: int) -> Joined | None:
    """How a SQLAlchemy transaction beginning on ``fairy`` joins the invocation in progress.

    ``None`` outside a scope (or in an ``autocommit=True`` one): SQLAlchemy's own
    behaviour. Inside, the transaction of a ``with_session`` session (marked with the
    :data:`OWNER` execution option) that begins while the invocation's transaction is
    empty (``status`` is libpq's ``IDLE``) is the invocation's transaction; any other
    gets a new savepoint (the caller sends ``SAVEPOINT``).

    >>> joined(None, object(), 0) is None
    True
    """
    scope = database.current if database is not None else None
    if scope is None or scope.autocommit or scope.conn is not _raw(fairy):
        return None
    if getattr(fairy, "_lambda_db_owner", False):
        if status == IDLE:
            return Joined(scope, None, SESSION_OF_SCOPE)
        return Joined(scope, f"lambda_db_{next(_savepoints)}", SESSION_OF_SCOPE)
    return Joined(scope, f"lambda_db_{next(_savepoints)}")


def _name(how: Joined) -> str:
    """``how``, as the handler knows it: its kind, when it began, its savepoint."""
    stack = how.scope.joined or []
    began = f"begun {_nth(stack.index(how) + 1)} of those open, " if how in stack else ""
    if how.savepoint is None:
        return f"{how.kind} ({began}the invocation's transaction itself)"
    return f"{how.kind} ({began}in SAVEPOINT {how.savepoint})"


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_FIX = (
    "Joined transactions share the invocation's one transaction and must end in LIFO order, "
    "last begun first ended: commit (or roll back) and close an inner Connection, Session or "
    "engine.begin() block before the one it was opened under ends, and do not use an outer "
    "one while an inner one is open (close() without commit() rolls back: call "
    "conn.commit() before close() to keep the work). Nothing was sent for this; the "
    "invocation is doomed: it rolls back when the handler ends and raises this error again, "
    "even if the handler catches it"
)


def _ended(how: Joined, *, commit: bool) -> None:
    """Take ``how`` off its invocation's stack as it commits or rolls back.

    Raises :class:`~lambda_db.TransactionOrderError`, and dooms the invocation
    (:meth:`~lambda_db._invocation.Invocation.doom`), when ending it as asked would lose or
    mis-attribute work: it is not the innermost open transaction (its savepoint's
    ``RELEASE`` would end the ones above it, its ``ROLLBACK TO`` undo their work), or it
    rolls back while holding others' work (:attr:`Joined.others`). The caller sends the
    ``RELEASE``, ``ROLLBACK TO`` or ``ROLLBACK`` only when this returns.
    """
    scope = how.scope
    stack = scope.joined
    if not stack:
        return
    if stack[-1] is how:
        if commit:
            _fold(stack, len(stack) - 1)
            return
        if not how.others:
            stack.pop()
            return
        name = _name(how)
        stack.pop()
        raise scope.doom(_holds_others(f"{name} rolled back"))
    try:
        index = stack.index(how)
    except ValueError:
        return
    if commit and how.savepoint is None:
        del stack[index]
        return  # the invocation's transaction: its commit sends nothing, loses nothing
    name, above = _name(how), stack[index + 1 :]
    error = _open_above(f"{name} {_OUT_OF_ORDER[commit]}", above)
    del stack[index]
    raise scope.doom(error)


#: How ending a transaction with others open above it would have lost their work.
_OUT_OF_ORDER = {
    True: "committed; releasing its savepoint would have ended theirs too",
    False: "rolled back; that would have undone their work too",
}


def _fold(stack: list[Joined], index: int) -> None:
    """Take the transaction at ``index`` off ``stack`` as it ends keeping its work: that
    work now lies in the range of the one beneath (:attr:`Joined.others`)."""
    del stack[index]
    if index:
        stack[index - 1].others += 1


def _holds_others(what: str) -> TransactionOrderError:
    return TransactionOrderError(
        f"{what}, but its range also holds work that is not its own (a transaction begun "
        f"before it ran statements while it was open, or one begun after it committed; "
        f"reads count too): rolling back would have undone that work as well, which its "
        f"transaction was told was done. {_FIX}"
    )


def _open_above(what: str, above: list[Joined]) -> TransactionOrderError:
    names = ", ".join(_name(entry) for entry in above)
    return TransactionOrderError(
        f"{what}: {len(above)} joined transaction(s) begun after it in this invocation were "
        f"still open ({names}). {_FIX}"
    )


def _nested(dialect: _InvocationAware, connection: Any) -> Joined | None:
    """The :class:`Joined` of the SQLAlchemy ``Connection`` using a ``begin_nested()``
    savepoint, when it joined the invocation in progress (else ``None``)."""
    database = dialect.database
    if database is None or getattr(_local, "releasing", 0) != 0:
        return None
    how: Joined | None = getattr(connection.connection, "_lambda_db_joined", None)
    if how is None or how.scope is not database.current:
        return None
    return how


def _nested_ends(how: Joined, name: str, *, rollback: bool) -> None:
    """Check a ``begin_nested()`` savepoint of ``how``'s as it is released or rolled back
    to: refused (:class:`~lambda_db.TransactionOrderError`, the invocation doomed) when
    joined transactions begun after ``how`` are open (``RELEASE`` or ``ROLLBACK TO`` would
    end them, the latter undo their work), or, rolling back, when others' work landed in
    its range after it began."""
    marks = how.nested
    mark = marks.pop(name, None) if marks is not None else None
    stack = how.scope.joined or []
    what = f"the begin_nested() savepoint {name} of {_name(how)} was "
    what += "rolled back" if rollback else "released (committed)"
    if stack and stack[-1] is not how and how in stack:
        above = stack[stack.index(how) + 1 :]
        undone = "undone their work" if rollback else "ended their savepoints"
        raise how.scope.doom(_open_above(f"{what}; that would have {undone} too", above))
    if rollback and mark is not None and how.others != mark:
        raise how.scope.doom(_holds_others(what))


def end_left_open(scope: Invocation, conn: Any) -> None:
    """At the end of a successful scope: roll back (``ROLLBACK TO``, innermost first) the
    joined savepoints of ``Connection`` s and ``Session`` s left open, as closing them
    would have (SQLAlchemy's close without commit), with a WARNING.

    ``with_session``'s session is left for the scope to commit. Dooms the invocation
    (:class:`~lambda_db.TransactionOrderError`) when one left open holds others' work, or
    lies beneath ``with_session``'s session's savepoint: its rollback would undo that too.
    """
    stack = scope.joined or []
    kept: Joined | None = None  # with_session's session, left for the scope to commit
    for how in reversed(list(stack)):
        if how.kind == SESSION_OF_SCOPE:
            kept = kept or how
            continue
        if kept is not None:
            raise scope.doom(
                _open_above(
                    f"{_name(how)} was left open (neither committed nor closed) when the "
                    f"handler returned; rolling it back, as a close would have, would "
                    f"have undone the work of the one begun after it",
                    [kept],
                )
            )
        if how.others:
            raise scope.doom(
                _holds_others(
                    f"{_name(how)} was left open (neither committed nor closed) when the "
                    f"handler returned, to be rolled back as a close would have"
                )
            )
        logger.warning(
            "%s was left open (neither committed nor closed) when the handler returned: "
            "rolled back, as a close without commit() would have",
            _name(how),
        )
        stack.pop()
        _execute(conn, f"ROLLBACK TO SAVEPOINT {how.savepoint}")


on_left_open(end_left_open)  # the invocation ends them: it never imports this module


def _released(dbapi_connection: Any) -> None:
    """Forget the transaction on ``dbapi_connection``, ended without sending anything
    (:func:`releasing`): its work stays, in the range of the transaction beneath it."""
    how = getattr(dbapi_connection, "_lambda_db_joined", None)
    if how is None:
        return
    dbapi_connection._lambda_db_joined = None
    stack = how.scope.joined
    if stack and how in stack:
        _fold(stack, stack.index(how))


def _executing(context: Any) -> None:
    """Before a statement: when its transaction is not the innermost open one, the ones
    above it now hold its work (:attr:`Joined.others`).

    One attribute lookup when the statement's transaction did not join an invocation. Reads
    count as work here: a dialect cannot tell a ``SELECT`` that writes from one that does
    not, so a read through an outer transaction while an inner one is open also makes the
    inner one's rollback fail.
    """
    if context is None:
        return
    how = getattr(context._dbapi_connection, "_lambda_db_joined", None)
    if how is None:
        return
    stack = how.scope.joined
    if stack and stack[-1] is not how:
        for entry in reversed(stack):
            if entry is how:
                return
            entry.others += 1


_watching = False


def _watch_sessions() -> None:
    """Name the joined transactions of ``Session`` s as such in errors (once the ORM is
    imported: before, there is no ``Session``)."""
    global _watching
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    event.listen(Session, "after_begin", _session_began)
    _watching = True


def _session_began(session: Any, transaction: Any, connection: Any) -> None:
    how = getattr(connection.connection, "_lambda_db_joined", None)
    if how is not None and how.kind == CONNECTION:
        how.kind = SESSION


def _raw(connection: Any) -> Any:
    """The DB-API connection behind SQLAlchemy's proxies (or ``connection`` itself)."""
    return getattr(connection, "dbapi_connection", connection)


def _refuse(options: Mapping[str, Any]) -> None:
    for name in options:
        if name in REFUSED_OPTIONS:
            raise ConfigurationError(
                f"the {name!r} execution option is not supported by lambda_db.sqlalchemy (the "
                f"driver would apply it by ending or refusing the transaction in progress, "
                f"and it would outlive the invocation): use {REFUSED_OPTIONS[name]}",
                variable=name,
            )


class _InvocationAware:
    """The changes, over either driver's dialect (see the module docstring)."""

    supports_server_side_cursors = False

    #: The Database whose invocation scopes this dialect's transactions join (set by
    #: :func:`lambda_db.sqlalchemy.create_engine`; ``None``: SQLAlchemy's behaviour).
    database: Database | None = None

    #: ``(DB-API connection, it was in a transaction)`` of the first connect, whose
    #: rollback after the dialect's learning reads is sent only when it was not.
    _first_connect: tuple[Any, bool] | None = None

    def _status(self, raw: Any) -> int:
        return get_driver(self.driver).status(raw)  # type: ignore[attr-defined]

    def initialize(self, connection: Any) -> None:
        raw = _raw(connection.connection)
        in_transaction = self._status(raw) != IDLE
        super().initialize(connection)  # type: ignore[misc]
        self._first_connect = (raw, in_transaction)

    def after_connect(self, dbapi_connection: Any) -> None:
        """Called for each new DB-API connection, after SQLAlchemy's own ``connect`` events."""
        self._first_connect = None  # the first connect's rollback is done or moot

    # -- joining the invocation's transaction ----------------------------------------------

    def do_begin(self, dbapi_connection: Any) -> None:
        raw = _raw(dbapi_connection)
        how = joined(self.database, dbapi_connection, self._status(raw))
        if how is not None:
            if how.savepoint is not None:
                _execute(raw, f"SAVEPOINT {how.savepoint}")
            if not _watching and "sqlalchemy.orm" in sys.modules:
                _watch_sessions()
            scope = how.scope
            stack = scope.joined
            if stack is None:
                stack = scope.joined = []
            stack.append(how)
        dbapi_connection._lambda_db_joined = how

    def _joined(self, dbapi_connection: Any) -> tuple[Joined | None, bool]:
        """``(how this transaction joined, or None; whether a scope owns the connection)``."""
        how = getattr(dbapi_connection, "_lambda_db_joined", None)
        dbapi_connection._lambda_db_joined = None  # the transaction ends here
        scope = self.database.current if self.database is not None else None
        owned = scope is not None and not scope.autocommit and scope.conn is _raw(dbapi_connection)
        if how is not None and how.scope is not scope:
            how = None  # begun in an invocation that has ended: that scope ended it
        return how, owned

    def do_commit(self, dbapi_connection: Any) -> None:
        if getattr(_local, "releasing", 0):
            _released(dbapi_connection)
            return
        how, owned = self._joined(dbapi_connection)
        if how is not None:
            _ended(how, commit=True)
            if how.savepoint is not None:
                _execute(_raw(dbapi_connection), f"RELEASE SAVEPOINT {how.savepoint}")
            return  # the invocation's own transaction: the scope commits it
        if owned:
            return  # begun before the scope (which rolled it back): never commit its work
        super().do_commit(dbapi_connection)  # type: ignore[misc]

    def do_rollback(self, dbapi_connection: Any) -> None:
        if getattr(_local, "releasing", 0):
            _released(dbapi_connection)
            return
        raw = _raw(dbapi_connection)
        first = self._first_connect
        if first is not None and first[0] is raw:  # after the dialect's learning reads
            self._first_connect = None
            if not first[1]:  # else they ran in the handler's transaction: keep it
                super().do_rollback(dbapi_connection)  # type: ignore[misc]
            return
        how, owned = self._joined(dbapi_connection)
        if how is not None:
            _ended(how, commit=False)
            if how.savepoint is not None:
                _execute(raw, f"ROLLBACK TO SAVEPOINT {how.savepoint}")
                return
        elif owned:
            return  # not this transaction's to roll back: the scope ends it
        super().do_rollback(dbapi_connection)  # type: ignore[misc]

    # -- begin_nested() savepoints inside a joined transaction -----------------------------

    def do_savepoint(self, connection: Any, name: str) -> None:
        super().do_savepoint(connection, name)  # type: ignore[misc]
        how = _nested(self, connection)
        if how is not None:
            marks = how.nested
            if marks is None:
                marks = how.nested = {}
            marks[name] = how.others

    def do_rollback_to_savepoint(self, connection: Any, name: str) -> None:
        how = _nested(self, connection)
        if how is not None:
            _nested_ends(how, name, rollback=True)
        super().do_rollback_to_savepoint(connection, name)  # type: ignore[misc]

    def do_release_savepoint(self, connection: Any, name: str) -> None:
        how = _nested(self, connection)
        if how is not None:
            _nested_ends(how, name, rollback=False)
        super().do_release_savepoint(connection, name)  # type: ignore[misc]

    # -- statements: which transaction's range they land in -------------------------------

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        _executing(context)
        super().do_execute(cursor, statement, parameters, context)  # type: ignore[misc]

    def do_executemany(
        self, cursor: Any, statement: Any, parameters: Any, context: Any = None
    ) -> None:
        _executing(context)
        super().do_executemany(cursor, statement, parameters, context)  # type: ignore[misc]

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        _executing(context)
        super().do_execute_no_params(cursor, statement, context)  # type: ignore[misc]

    # -- options that would end the transaction, or outlive the invocation -----------------

    def set_engine_execution_options(self, engine: Any, opts: Mapping[str, Any]) -> None:
        _refuse(opts)
        super().set_engine_execution_options(engine, opts)  # type: ignore[misc]

    def set_connection_execution_options(self, connection: Any, opts: Mapping[str, Any]) -> None:
        _refuse(opts)
        super().set_connection_execution_options(connection, opts)  # type: ignore[misc]

    def set_isolation_level(self, dbapi_connection: Any, level: str) -> None:
        _refuse({"isolation_level": level})

    def set_readonly(self, connection: Any, value: bool) -> None:
        _refuse({"postgresql_readonly": value})

    def set_deferrable(self, connection: Any, value: bool) -> None:
        _refuse({"postgresql_deferrable": value})

    def get_default_isolation_level(self, dbapi_conn: Any) -> str:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SHOW default_transaction_isolation")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return str(row[0]).upper()


def _execute(raw: Any, statement: str) -> None:
    cursor = raw.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


class Psycopg2Dialect(_InvocationAware, PGDialect_psycopg2):  # type: ignore[misc]
    """SQLAlchemy's ``postgresql+psycopg2`` dialect, invocation-aware."""

    supports_statement_cache = True


class PsycopgDialect(_InvocationAware, PGDialect_psycopg):  # type: ignore[misc]
    """SQLAlchemy's ``postgresql+psycopg`` (psycopg 3) dialect, invocation-aware.

    SQLAlchemy configures psycopg 3's type adapters (JSON (de)serializers, ``hstore``,
    ``native_inet_types``) as a map it passes to ``psycopg.connect(context=...)``.
    lambda-db opens the connections, so each new one gets a copy of that map here, which
    is what ``connect(context=...)`` itself does with it.
    """

    supports_statement_cache = True

    def after_connect(self, dbapi_connection: Any) -> None:
        super().after_connect(dbapi_connection)
        adapters = self._psycopg_adapters_map
        if adapters is not None:
            from psycopg.adapt import AdaptersMap

            dbapi_connection._adapters = AdaptersMap(adapters)


registry.register(DIALECTS["psycopg2"].replace("+", "."), __name__, "Psycopg2Dialect")
registry.register(DIALECTS["psycopg"].replace("+", "."), __name__, "PsycopgDialect")
