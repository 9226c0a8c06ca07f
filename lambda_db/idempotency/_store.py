"""The idempotency table: its schema, and every statement lambda-db sends to it.

One row per key. ``lambda_db.idempotent`` writes it inside the invocation's transaction
(so the row and the handler's writes commit together or not at all); the Powertools
adapter writes it in short transactions of its own. Expiry is measured on the server's
clock (``now()``), the one clock every execution environment shares.

Every statement is plain DML on this table: no ``SET``, no advisory lock, nothing that pins
RDS Proxy; a result is written in pieces, so that no statement reaches RDS Proxy's 16 KB
pinning threshold however large the result.

Example::

    >>> Store("lambda_db_idempotency").table
    '"lambda_db_idempotency"'
    >>> Store("app.idempotency").index
    '"idempotency_2dbe6ca7_expires_at"'
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from lambda_db.errors import ConfigurationError

__all__ = [
    "CHUNK_CHARS",
    "DEFAULT_TABLE",
    "Claim",
    "Record",
    "Store",
    "check_table_name",
]

#: The table ``ensure_schema``, ``idempotent`` and the Powertools adapter use by default.
DEFAULT_TABLE = "lambda_db_idempotency"

#: Characters of JSON per statement when a result is stored: psycopg2 inlines parameters
#: (at worst doubling a quote each), so a statement stays far below RDS Proxy's 16 KB.
#: Text that is not ASCII goes in quarter-sized pieces (up to 4 bytes a character).
CHUNK_CHARS = 6000

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('lambda-db idempotency schema'))"


def check_table_name(table: str) -> tuple[str, ...]:
    """The parts of ``table`` (``name`` or ``schema.name``), or :class:`ConfigurationError`.

    >>> check_table_name("app.idempotency")
    ('app', 'idempotency')
    >>> check_table_name("x; DROP TABLE items")
    Traceback (most recent call last):
    lambda_db.errors.ConfigurationError: the idempotency table name must be NAME or SCHEMA.NAME ...
    """
    parts = tuple(table.split(".")) if isinstance(table, str) else ()
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ConfigurationError(
            "the idempotency table name must be NAME or SCHEMA.NAME (letters, digits and "
            f"underscores, at most 63 each), got {table!r}",
            variable="table",
        )
    return parts


@dataclass(frozen=True)
class Record:
    """A stored row, as a repeat or the Powertools adapter reads it."""

    payload_hash: str
    status: str
    #: The result's JSON (``None`` while a Powertools record is in progress).
    result: str | None
    #: Epoch seconds, by the server's clock.
    expires_at: float
    #: Epoch seconds (Powertools' in-progress expiry), or ``None``.
    in_progress_expires_at: float | None


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` did."""

    #: True: the key was absent (or expired) and is claimed in this transaction; False:
    #: an unexpired record exists (committed, or this transaction's own).
    claimed: bool
    #: Expired rows of other keys the statement deleted.
    swept: int = 0
    #: When not claimed, the record if the statement's snapshot shows it (READ COMMITTED
    #: only; ``None``: read it with :meth:`Store.fetch`).
    record: Record | None = None


class Store:
    """The statements for one table (its name checked and quoted once)."""

    def __init__(self, table: str = DEFAULT_TABLE) -> None:
        parts = check_table_name(table)
        self.name = table
        self.table = ".".join(f'"{part}"' for part in parts)
        # Two long names sharing a prefix must not share an index name (the second CREATE
        # INDEX IF NOT EXISTS would find the first's and create nothing).
        suffix = hashlib.sha256(table.encode()).hexdigest()[:8]
        self.index = f'"{parts[-1][:40]}_{suffix}_expires_at"'
        t = self.table
        self._schema = (
            _LOCK,
            f"""CREATE TABLE IF NOT EXISTS {t} (
    key                    text PRIMARY KEY,
    payload_hash           text NOT NULL DEFAULT '',
    status                 text NOT NULL DEFAULT 'COMPLETED'
                           CHECK (status IN ('INPROGRESS', 'COMPLETED')),
    result                 text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    expires_at             timestamptz NOT NULL,
    in_progress_expires_at timestamptz
)""",
            f"CREATE INDEX IF NOT EXISTS {self.index} ON {t} (expires_at)",
            f"COMMENT ON TABLE {t} IS 'lambda-db idempotency records: one per key, "
            "committed with the writes of the invocation that claimed it; expired rows are "
            "deleted a few at a time by later claims'",
        )
        # The claim: one INSERT that waits on the primary key for a concurrent claim of
        # the same key and takes over an expired record in place. Alone it reads nothing
        # (a read would make concurrent SERIALIZABLE invocations conflict). Under READ
        # COMMITTED the same round trip also deletes a bounded number of expired rows of
        # other keys (an index range scan from the oldest, never a scan of the table) and
        # reads the key's record as the statement's snapshot shows it, so that a repeat
        # costs no second round trip.
        claim = f"""INSERT INTO {t} AS r (key, payload_hash, expires_at)
    VALUES (%(key)s, %(hash)s, now() + %(ttl)s * interval '1 second')
    ON CONFLICT (key) DO UPDATE
       SET payload_hash = excluded.payload_hash, status = 'COMPLETED', result = NULL,
           created_at = now(), expires_at = excluded.expires_at, in_progress_expires_at = NULL
     WHERE r.expires_at <= now()
    RETURNING 1"""
        self._claim = claim
        self._claim_and_sweep = f"""WITH swept AS (
    DELETE FROM {t} WHERE key IN (
        SELECT key FROM {t}
         WHERE expires_at <= now() AND key <> %(key)s
         ORDER BY expires_at
         -- A role's or database's default isolation level is invisible to the client:
         -- the server decides (under REPEATABLE READ a sweep could meet 40001).
         LIMIT CASE WHEN current_setting('transaction_isolation') = 'read committed'
                    THEN %(sweep)s ELSE 0 END
           FOR UPDATE SKIP LOCKED)
    RETURNING 1
), claimed AS (
{claim}
)
SELECT (SELECT count(*) FROM claimed)::int, (SELECT count(*) FROM swept)::int,
       {_RECORD_COLUMNS.format(alias="existing")}
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN {t} AS existing ON existing.key = %(key)s AND existing.expires_at > now()"""
        self._sweep = f"""DELETE FROM {t} WHERE key IN (
    SELECT key FROM {t} WHERE expires_at <= now()
     ORDER BY expires_at LIMIT %(sweep)s FOR UPDATE SKIP LOCKED)"""
        self._fetch = (
            f"SELECT {_RECORD_COLUMNS.format(alias='r')} FROM {t} AS r"
            " WHERE r.key = %(key)s AND r.expires_at > now()"
        )
        # created_at = now(): the claim's own transaction (now() is the transaction's start);
        # no row means the handler ended the invocation's transaction itself.
        self._store_first = (
            f"UPDATE {t} SET result = %(chunk)s WHERE key = %(key)s AND created_at = now()"
        )
        self._store_more = f"UPDATE {t} SET result = result || %(chunk)s WHERE key = %(key)s"
        # The Powertools adapter's statements.
        self._put = f"""WITH claimed AS (
    INSERT INTO {t} AS r (key, payload_hash, status, expires_at, in_progress_expires_at)
    VALUES (%(key)s, %(hash)s, 'INPROGRESS', to_timestamp(%(expires)s),
            to_timestamp(%(in_progress)s))
    ON CONFLICT (key) DO UPDATE
       SET payload_hash = excluded.payload_hash, status = 'INPROGRESS', result = NULL,
           created_at = now(), expires_at = excluded.expires_at,
           in_progress_expires_at = excluded.in_progress_expires_at
     WHERE r.expires_at <= now()
        OR (r.status = 'INPROGRESS' AND r.in_progress_expires_at <= now())
    RETURNING 1
)
SELECT (SELECT count(*) FROM claimed)::int, {_RECORD_COLUMNS.format(alias="existing")}
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN {t} AS existing ON existing.key = %(key)s"""
        self._fetch_any = (
            f"SELECT {_RECORD_COLUMNS.format(alias='r')} FROM {t} AS r WHERE r.key = %(key)s"
        )
        self._update = (
            f"UPDATE {t} SET status = %(status)s, payload_hash = %(hash)s,"
            " expires_at = to_timestamp(%(expires)s), result = %(chunk)s WHERE key = %(key)s"
        )
        self._delete = f"DELETE FROM {t} WHERE key = %(key)s"

    def __repr__(self) -> str:
        return f"<Store {self.name}>"

    # -- schema --------------------------------------------------------------------------

    def create(self, cur: Any) -> None:
        """Create the table and its index if missing, under a transaction-level advisory
        lock (``CREATE ... IF NOT EXISTS`` alone races). Run inside a transaction."""
        for statement in self._schema:
            cur.execute(statement)

    # -- lambda_db.idempotent ------------------------------------------------------------

    def claim(self, cur: Any, key: str, payload_hash: str, ttl: float, sweep: int | None) -> Claim:
        """Claim ``key`` in the current transaction. ``sweep`` (READ COMMITTED only; ``None``
        otherwise): also delete up to that many expired rows and read the key's record.

        A concurrent claim of the same key makes this wait on the unique index until that
        transaction ends: committed, the key is not claimed (its record, committed after
        this statement's snapshot, is read with :meth:`fetch`); rolled back, it is claimed
        here.
        """
        params = {"key": key, "hash": payload_hash, "ttl": ttl, "sweep": sweep}
        if sweep is None:
            cur.execute(self._claim, params)
            return Claim(cur.fetchone() is not None)
        cur.execute(self._claim_and_sweep, params)
        row = cur.fetchone()
        claimed, swept = bool(row[0]), int(row[1])
        return Claim(claimed, swept, None if claimed else _record(row[2:]))

    def sweep(self, cur: Any, limit: int) -> int:
        """Delete up to ``limit`` expired rows, oldest first; how many went."""
        cur.execute(self._sweep, {"sweep": limit})
        return int(cur.rowcount)

    def fetch(self, cur: Any, key: str) -> Record | None:
        """The unexpired committed (or own) record of ``key``, or ``None``."""
        cur.execute(self._fetch, {"key": key})
        row = cur.fetchone()
        return None if row is None else _record(row)

    def store(self, cur: Any, key: str, result: str) -> int:
        """Write ``result`` (JSON text) into the row this transaction claimed, in statements
        of at most :data:`CHUNK_CHARS` characters of it; returns the number of statements.
        False (nothing written) when the row is not this transaction's claim."""
        chunks = _chunks(result)
        cur.execute(self._store_first, {"key": key, "chunk": chunks[0]})
        if cur.rowcount != 1:
            return 0
        for chunk in chunks[1:]:
            cur.execute(self._store_more, {"key": key, "chunk": chunk})
        return len(chunks)

    # -- the Powertools adapter ----------------------------------------------------------

    def put_in_progress(
        self,
        cur: Any,
        key: str,
        payload_hash: str,
        expires: float,
        in_progress: float | None,
    ) -> tuple[bool, Record | None]:
        """Insert an ``INPROGRESS`` row unless an unexpired one exists: (claimed, existing)."""
        cur.execute(
            self._put,
            {"key": key, "hash": payload_hash, "expires": expires, "in_progress": in_progress},
        )
        row = cur.fetchone()
        return bool(row[0]), (None if row[0] else _record(row[1:]))

    def fetch_any(self, cur: Any, key: str) -> Record | None:
        """The record of ``key`` whatever its expiry, or ``None``."""
        cur.execute(self._fetch_any, {"key": key})
        row = cur.fetchone()
        return None if row is None else _record(row)

    def update(
        self, cur: Any, key: str, status: str, payload_hash: str, expires: float, result: str
    ) -> None:
        """Set a Powertools record's status, expiry and result (in pieces, like :meth:`store`)."""
        chunks = _chunks(result)
        cur.execute(
            self._update,
            {
                "key": key,
                "status": status,
                "hash": payload_hash,
                "expires": expires,
                "chunk": chunks[0],
            },
        )
        for chunk in chunks[1:]:
            cur.execute(self._store_more, {"key": key, "chunk": chunk})

    def delete(self, cur: Any, key: str) -> None:
        """Delete the record of ``key``."""
        cur.execute(self._delete, {"key": key})


_RECORD_COLUMNS = (
    "{alias}.payload_hash, {alias}.status, {alias}.result,"
    " extract(epoch FROM {alias}.expires_at)::float8,"
    " extract(epoch FROM {alias}.in_progress_expires_at)::float8"
)


def _record(columns: Any) -> Record | None:
    payload_hash, status, result, expires_at, in_progress = columns
    if payload_hash is None:  # the LEFT JOIN found nothing
        return None
    return Record(payload_hash, status, result, expires_at, in_progress)


def _chunks(text: str) -> list[str]:
    """``text`` in pieces of at most :data:`CHUNK_CHARS` bytes' worth (at least one piece).

    >>> [len(c) for c in _chunks("x" * 13000)]
    [6000, 6000, 1000]
    >>> [len(c) for c in _chunks("\u00e9" * 2000)]
    [1500, 500]
    >>> _chunks("")
    ['']
    """
    size = CHUNK_CHARS if text.isascii() else CHUNK_CHARS // 4
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
