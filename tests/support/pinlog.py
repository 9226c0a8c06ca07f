"""The pin recorder: what every session sent to the suite's server, read from its statement log.

RDS Proxy pins a client connection to one database connection (and stops multiplexing it)
when a session changes state. AWS's pinning page lists, for PostgreSQL: ``SET`` and
``set_config``, ``RESET``, ``DISCARD``, prepared statements, ``LISTEN``, session-level
advisory locks, temporary tables, ``DECLARE``d (holdable) cursors, and any statement over
16 KB (see FACTS.md). The suite's server logs every statement and connection as JSON lines
(``LocalPostgres(statement_log=True)``); :class:`PinLog` reads that log, and
:func:`pinning_reason` says whether a statement is on the list.

The log is written by the server's logging collector, a little after the statement:
:meth:`PinLog.sync` runs a unique marker statement and reads until the marker appears, so
every statement that reached the server before it has been read. Statements sent by the
superuser (the tests' own setup) are never findings.

Example::

    log = PinLog(pg)
    with log.capture() as block:
        handler(event, LambdaContext(timeout=3))
    assert block.statements(role=app_db.role) == ["BEGIN", "INSERT ...", "COMMIT"]
    assert block.connections(role=app_db.role) == 0
    assert block.findings() == []
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg2
import psycopg2.extensions

from lambda_db_lab.localpg import LocalPostgres

__all__ = [
    "ENV_MODE",
    "MAX_STATEMENT_BYTES",
    "Capture",
    "Finding",
    "Mode",
    "PinLog",
    "Record",
    "findings",
    "mode_from_env",
    "pinning_reason",
    "verdict",
]

#: ``enforce`` (a finding fails the test), ``report`` (findings are listed in the summary
#: only) or ``off`` (no statement log at all).
ENV_MODE = "LAMBDA_DB_PINLOG"
Mode = Literal["enforce", "report", "off"]
_MODES: tuple[Mode, ...] = ("enforce", "report", "off")

#: RDS Proxy pins on "any statement with a text size greater than 16 KB".
MAX_STATEMENT_BYTES = 16 * 1024

#: How long :meth:`PinLog.sync` waits for its marker before giving up.
SYNC_TIMEOUT = 15.0
_POLL = 0.002


def mode_from_env(default: Mode = "enforce") -> Mode:
    """The recorder's mode from ``$LAMBDA_DB_PINLOG``, else ``default``.

    >>> mode_from_env("report") in ("enforce", "report", "off")
    True
    """
    value = os.environ.get(ENV_MODE, "").strip().lower() or default
    for mode in _MODES:
        if value == mode:
            return mode
    raise ValueError(f"{ENV_MODE}={value!r}: expected one of {', '.join(_MODES)}")


# -- what pins ----------------------------------------------------------------------------

# Single-quoted literals (with '' escapes, and E'' with backslash escapes) and comments hide
# words that are data, not commands. Dollar-quoted bodies stay: a DO block runs its body.
_NOT_CODE = re.compile(
    r"""[eE]'(?:[^'\\]|\\.|'')*'   # E'...' with backslash escapes
      | '(?:[^']|'')*'            # '...'
      | --[^\n]*                  # -- comment
      | /\*.*?\*/                 # /* comment */
    """,
    re.VERBOSE | re.DOTALL,
)
_CALLS = (
    (re.compile(r"\bset_config\s*\(", re.IGNORECASE), "set_config()"),
    (
        re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE),
        "session-level advisory lock",
    ),
    (re.compile(r"\bINTO\s+(?:TEMP|TEMPORARY)\b", re.IGNORECASE), "temporary table"),
)
_CREATE_TEMP = re.compile(
    r"\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:GLOBAL\s+|LOCAL\s+)?TEMP(?:ORARY)?\s", re.IGNORECASE
)
_COMMANDS = {
    "SET": "SET",
    "RESET": "RESET",
    "DISCARD": "DISCARD",
    "PREPARE": "PREPARE",
    "EXECUTE": "EXECUTE of a prepared statement",
    "DEALLOCATE": "DEALLOCATE",
    "LISTEN": "LISTEN",
    "DECLARE": "DECLARE (cursor)",
}


def pinning_reason(sql: str) -> str | None:
    """Why ``sql`` (one simple-protocol query, possibly several statements) pins, or ``None``.

    >>> pinning_reason("SELECT set_config('statement_timeout', '1s', true)")
    'set_config()'
    >>> pinning_reason("BEGIN; SET LOCAL work_mem = '8MB'")
    'SET'
    >>> pinning_reason("SELECT pg_advisory_xact_lock(1)") is None
    True
    >>> pinning_reason("UPDATE items SET n = 1 WHERE note = 'set_config('") is None
    True
    """
    size = len(sql.encode())
    if size > MAX_STATEMENT_BYTES:
        return f"statement of {size} bytes (over 16 KB)"
    code = _NOT_CODE.sub(" ", sql)
    for pattern, reason in _CALLS:
        if pattern.search(code):
            return reason
    for part in code.split(";"):
        words = part.upper().split()
        if not words:
            continue
        if words[0] in _COMMANDS:
            return _COMMANDS[words[0]]
        if _CREATE_TEMP.match(part):
            return "temporary table"
    return None


# -- the log ------------------------------------------------------------------------------

# "execute <unnamed>: SQL", "execute S_1/C_2: SQL", "execute fetch from <unnamed>/C_1: SQL"
_EXECUTE = re.compile(
    r"execute (?:fetch from )?(?P<name>[^/:\s]+)(?:/(?P<portal>[^:\s]+))?: (?P<sql>.*)\Z",
    re.DOTALL,
)
_AUTHORIZED = "connection authorized: "
_APPLICATION = re.compile(r" application_name=(.*?)(?: SSL enabled| GSS| \(|\Z)")


@dataclass(frozen=True)
class Record:
    """One statement or connection, as the server logged it."""

    kind: Literal["statement", "connection"]
    user: str
    dbname: str
    application_name: str
    pid: int
    #: The statement's text (for a connection, the log message).
    sql: str
    #: The prepared statement executed through the extended protocol (``None`` when unnamed
    #: or for the simple protocol).
    prepared: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Record | None:
        """A statement or connection record from one ``jsonlog`` object, else ``None``."""
        message = str(data.get("message", ""))
        application_name = str(data.get("application_name", ""))
        prepared = None
        if message.startswith("statement: "):
            kind: Literal["statement", "connection"] = "statement"
            sql = message[len("statement: ") :]
        elif message.startswith("execute "):
            match = _EXECUTE.match(message)
            if match is None:
                return None
            kind, sql = "statement", match["sql"]
            prepared = None if match["name"] == "<unnamed>" else match["name"]
        elif message.startswith(_AUTHORIZED):
            # The startup packet's application_name is in the message, not yet in the field.
            found = _APPLICATION.search(message)
            kind, sql, application_name = "connection", message, found[1] if found else ""
        else:
            return None
        return cls(
            kind=kind,
            user=str(data.get("user", "")),
            dbname=str(data.get("dbname", "")),
            application_name=application_name,
            pid=int(data.get("pid", 0)),
            sql=sql,
            prepared=prepared,
        )

    def pinning_reason(self) -> str | None:
        """Why this statement pins (``None`` for a connection or a harmless statement)."""
        if self.kind != "statement":
            return None
        if self.prepared is not None:
            return f"execution of the named prepared statement {self.prepared!r}"
        return pinning_reason(self.sql)

    def matches(self, role: str | None, application_name: str | None) -> bool:
        """True when the record is from ``role`` and ``application_name`` (``None``: any)."""
        return (role is None or self.user == role) and (
            application_name is None or self.application_name == application_name
        )


@dataclass(frozen=True)
class Finding:
    """A pinning statement sent by a non-superuser session."""

    reason: str
    record: Record

    def __str__(self) -> str:
        sql = " ".join(self.record.sql.split())
        shown = sql if len(sql) <= 160 else sql[:157] + "..."
        r = self.record
        return f"{self.reason}: {shown!r} (role {r.user!r}, application {r.application_name!r})"


def findings(records: Iterable[Record], superusers: frozenset[str]) -> list[Finding]:
    """The pinning statements among ``records`` sent by roles not in ``superusers``."""
    found = []
    for record in records:
        if record.user in superusers:
            continue
        reason = record.pinning_reason()
        if reason is not None:
            found.append(Finding(reason, record))
    return found


@dataclass
class Capture:
    """What reached the server during one ``with PinLog.capture()`` block."""

    superusers: frozenset[str]
    records: list[Record] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        statements = sum(1 for r in self.records if r.kind == "statement")
        return f"<Capture: {statements} statement(s), {self.connections()} connection(s)>"

    def statements(self, role: str | None = None, application_name: str | None = None) -> list[str]:
        """The statements ``role`` (and ``application_name``) sent, in order."""
        return [
            r.sql
            for r in self.records
            if r.kind == "statement" and r.matches(role, application_name)
        ]

    def connections(self, role: str | None = None, application_name: str | None = None) -> int:
        """How many sessions ``role`` (and ``application_name``) opened."""
        return sum(
            1 for r in self.records if r.kind == "connection" and r.matches(role, application_name)
        )

    def findings(self) -> list[Finding]:
        """The pinning statements of non-superuser sessions."""
        return findings(self.records, self.superusers)


class PinLog:
    """Read ``server``'s statement log incrementally (the server runs with ``statement_log``).

    Records accumulate until :meth:`take` hands them over: the pin recorder takes them at
    the end of each test, so a test owns everything the server received since the previous
    test ended (its fixtures' statements included).
    """

    def __init__(self, server: LocalPostgres) -> None:
        if not server.statement_log:
            raise ValueError("the server was started without statement_log=True")
        self.server = server
        self.superusers = frozenset({server.superuser})
        self._path: Path = server.statement_log_path
        self._offset = 0
        self._partial = b""
        self._pending: list[Record] = []
        self._token = secrets.token_hex(6)
        self._seq = itertools.count()
        self._conn: psycopg2.extensions.connection | None = None

    def close(self) -> None:
        """Close the marker connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def sync(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Read the log up to a marker statement run now (so nothing sent before is missed)."""
        marker = f"pinlog {self._token} {next(self._seq)}"
        self._execute(f"SELECT '{marker}'")
        deadline = time.monotonic() + timeout
        while not self._read_until(marker):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the marker statement did not reach {self._path} within {timeout:g} s"
                )
            time.sleep(_POLL)

    def take(self) -> list[Record]:
        """Every record since the last :meth:`take` (after a :meth:`sync`)."""
        self.sync()
        records, self._pending = self._pending, []
        return records

    @contextlib.contextmanager
    def capture(self) -> Iterator[Capture]:
        """Collect what reaches the server during the block (into the returned :class:`Capture`).

        The records also stay with the running test, for the recorder's verdict.
        """
        self.sync()
        start = len(self._pending)
        block = Capture(self.superusers)
        yield block
        self.sync()
        block.records = self._pending[start:]

    def _execute(self, sql: str) -> None:
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.server.admin()
                with self._conn.cursor() as cur:
                    cur.execute(sql)
                return
            except psycopg2.OperationalError:
                self.close()  # someone terminated it; one fresh connection
                if attempt:
                    raise

    def _read_until(self, marker: str) -> bool:
        """Parse new complete lines; True once ``marker`` has been read."""
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return False
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        seen = False
        needle = marker.encode()
        for line in lines:
            if needle in line:
                seen = True
                continue
            if self._token.encode() in line:
                continue  # an earlier marker
            record = Record.parse(json.loads(line))
            if record is not None:
                self._pending.append(record)
        return seen


def verdict(found: list[Finding], *, pins: str | None, mode: Mode) -> str | None:
    """The failure message for a test's ``found`` findings, or ``None`` when it passes.

    A test marked ``pins`` (it pins on purpose) never fails on findings; in ``report`` mode
    no test does.

    >>> verdict([], pins=None, mode="enforce") is None
    True
    """
    if not found or pins is not None or mode != "enforce":
        return None
    lines = "\n".join(f"  {f}" for f in found[:20])
    more = f"\n  ... and {len(found) - 20} more" if len(found) > 20 else ""
    return (
        f"the pin recorder saw {len(found)} statement(s) that pin an RDS Proxy connection, "
        f"sent by non-superuser sessions:\n{lines}{more}\n"
        "Mark a test that pins on purpose with @pytest.mark.pins('why'); "
        f"{ENV_MODE}=report lists findings without failing."
    )
