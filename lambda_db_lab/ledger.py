"""Every invocation writes one row with a unique id; the ledger compares rows with outcomes.

The proof that nothing was lost and nothing duplicated is arithmetic: the ids the server
committed must be exactly the ids of the invocations that succeeded. The one honest
exception is a connection lost during ``COMMIT``: lambda-db then raises
:class:`~lambda_db.ConnectionLostError` saying the outcome is unknown, and such a row may
or may not be there. The ledger counts those separately instead of hiding them.

Example::

    outcome = invoke(handler_for(db), new_event(), LambdaContext(timeout=3))
    ledger = Ledger.check([outcome], committed_ids(app_db))
    ledger.assert_exact()
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lambda_db import Database, with_connection

if TYPE_CHECKING:
    from lambda_db_lab.appdb import AppDb

__all__ = [
    "BadEvent",
    "DDL",
    "TABLE",
    "Ledger",
    "Outcome",
    "committed_ids",
    "create_table",
    "new_event",
    "handler_for",
    "invoke",
    "is_bad",
    "write_row",
]

TABLE = "invocations"
DDL = f"CREATE TABLE {TABLE} (id text PRIMARY KEY, env int NOT NULL, seq int NOT NULL)"
INSERT = f"INSERT INTO {TABLE} (id, env, seq) VALUES (%s, %s, %s)"


Handler = Callable[[dict[str, Any], Any], Any]


class BadEvent(ValueError):
    """The event cannot be processed: the handler's error path, taken on purpose."""


def new_event(
    seq: int = 0, env: int = 0, work: float = 0.0, *, bad: bool = False
) -> dict[str, Any]:
    """An invocation's event: a new unique id, who sends it, how long to hold, and
    whether it is malformed (:func:`write_row` then raises :class:`BadEvent`)."""
    return {"id": uuid.uuid4().hex, "env": env, "seq": seq, "work": work, "bad": bad}


def is_bad(seq: int, bad_every: int) -> bool:
    """Whether invocation ``seq`` gets a malformed event: the second, then every
    ``bad_every``-th (never when ``bad_every`` is 0).

    >>> [is_bad(seq, 4) for seq in range(6)]
    [False, True, False, False, False, True]
    """
    return bad_every > 0 and seq % bad_every == 1


def write_row(cur: Any, event: Mapping[str, Any]) -> None:
    """The work of one invocation: insert its row, read it back, optionally hold.

    A malformed event (``"bad": true``) raises :class:`BadEvent` before any statement,
    as a handler's validation would: what the handler leaves behind is its error path's.
    """
    if event.get("bad"):
        raise BadEvent(f"event {event['id']}: malformed on purpose")
    cur.execute(INSERT, (event["id"], event["env"], event["seq"]))
    cur.execute(f"SELECT count(*) FROM {TABLE} WHERE id = %s", (event["id"],))
    row = cur.fetchone()
    if row != (1,):
        raise AssertionError(f"read-your-write failed for {event['id']}: {row}")
    if event.get("work"):
        cur.execute("SELECT pg_sleep(%s)", (event["work"],))


def handler_for(db: Database, during: Callable[[Any], object] | None = None) -> Handler:
    """A ``@with_connection`` handler on ``db`` that writes its row, then calls ``during(cursor)``.

    ``during`` is where a test injects a fault, inside the invocation's transaction.
    """

    @with_connection(database=db, inject="conn")
    def handler(event: dict[str, Any], context: Any, conn: Any) -> str:
        with conn.cursor() as cur:
            write_row(cur, event)
            if during is not None:
                during(cur)
        return "ok"

    return handler


@dataclass(frozen=True)
class Outcome:
    """What one invocation got. Times are ``time.monotonic()`` (one clock for all processes)."""

    id: str
    env: int
    seq: int
    started: float
    ended: float
    #: When Lambda would have stopped the invocation (start + the function's timeout).
    deadline: float
    #: The exception's class and its bases (names, so they cross process boundaries).
    family: tuple[str, ...] = ()
    message: str = ""
    #: ``ConnectionLostError.outcome_unknown``: the COMMIT itself was cut (the row may exist).
    commit_unknown: bool = False

    @property
    def ok(self) -> bool:
        """True when the handler returned."""
        return not self.family

    @property
    def error(self) -> str | None:
        """The exception's class name, or ``None``."""
        return self.family[0] if self.family else None

    @property
    def elapsed(self) -> float:
        """Seconds the invocation took."""
        return self.ended - self.started

    @property
    def inside_deadline(self) -> bool:
        """True when the invocation ended before Lambda would have killed it."""
        return self.ended < self.deadline

    def is_a(self, name: str) -> bool:
        """True when the exception is ``name`` or a subclass of it."""
        return name in self.family


def invoke(
    handler: Callable[[dict[str, Any], Any], Any],
    event: dict[str, Any],
    context: Any,
) -> Outcome:
    """Call ``handler(event, context)`` and record what happened (it never raises)."""
    timeout = context.get_remaining_time_in_millis() / 1000.0
    started = time.monotonic()
    family: tuple[str, ...] = ()
    message = ""
    unknown = False
    try:
        handler(event, context)
    except Exception as exc:  # noqa: BLE001 (every failure is an outcome to record)
        family = tuple(cls.__name__ for cls in type(exc).__mro__)
        message = " ".join(str(exc).split())
        unknown = bool(getattr(exc, "outcome_unknown", False))
    return Outcome(
        id=str(event["id"]),
        env=int(event.get("env", 0)),
        seq=int(event.get("seq", 0)),
        started=started,
        ended=time.monotonic(),
        deadline=started + timeout,
        family=family,
        message=message,
        commit_unknown=unknown,
    )


def create_table(app_db: AppDb) -> None:
    """Create the ledger table in ``app_db``, writable by its role."""
    app_db.query(f'{DDL}; GRANT ALL ON {TABLE} TO "{app_db.role}"')


def committed_ids(app_db: AppDb) -> list[str]:
    """Every id the server committed (duplicates would show: the list is not a set)."""
    return [str(row[0]) for row in app_db.query(f"SELECT id FROM {TABLE}")]


@dataclass(frozen=True)
class Ledger:
    """Committed rows against invocation outcomes."""

    succeeded: int
    failed: int
    committed: int
    #: Succeeded, but no row: lost.
    lost: frozenset[str]
    #: A row for an invocation that did not succeed (and was not cut during COMMIT).
    phantoms: frozenset[str]
    #: Rows written more than once.
    duplicates: frozenset[str]
    #: Lost during COMMIT: the row may exist; ``unknown_committed`` of them do.
    unknown: int
    unknown_committed: int

    @classmethod
    def check(cls, outcomes: Iterable[Outcome], committed: Iterable[str]) -> Ledger:
        """Compare ``outcomes`` with the ids the server ``committed``."""
        outcomes = list(outcomes)
        rows = list(committed)
        row_set = set(rows)
        ok = {o.id for o in outcomes if o.ok}
        unknown = {o.id for o in outcomes if not o.ok and o.commit_unknown}
        duplicates = {r for r, n in Counter(rows).items() if n > 1}
        return cls(
            succeeded=len(ok),
            failed=sum(1 for o in outcomes if not o.ok),
            committed=len(rows),
            lost=frozenset(ok - row_set),
            phantoms=frozenset(row_set - ok - unknown),
            duplicates=frozenset(duplicates),
            unknown=len(unknown),
            unknown_committed=len(unknown & row_set),
        )

    def assert_exact(self) -> None:
        """Nothing lost, nothing duplicated, no row without a successful invocation."""
        assert not self.lost, f"{len(self.lost)} successful invocation(s) left no row"
        assert not self.duplicates, f"{len(self.duplicates)} id(s) committed twice"
        assert not self.phantoms, f"{len(self.phantoms)} row(s) from failed invocations"
        assert self.committed == self.succeeded + self.unknown_committed, self
