"""The idempotency table: ``ensure_schema`` creates it, ``delete_expired`` trims it."""

from __future__ import annotations

from typing import Any

from lambda_db.idempotency._store import DEFAULT_TABLE, Store

__all__ = ["delete_expired", "ensure_schema"]


def ensure_schema(conn: Any, *, table: str = DEFAULT_TABLE) -> None:
    """Create the idempotency table and its ``expires_at`` index if they are missing.

    Idempotent, and safe when several callers run it at once: the statements run under a
    transaction-level advisory lock (``pg_advisory_xact_lock``, which does not pin RDS
    Proxy), because ``CREATE TABLE IF NOT EXISTS`` alone can fail when two sessions create
    the same table together. On a connection in a transaction (psycopg2's default), it
    joins that transaction and the caller commits, as the template's schema setup does; on
    an autocommit connection it runs a transaction of its own. The role needs ``CREATE`` on
    the schema; the functions' role needs ``SELECT, INSERT, UPDATE, DELETE`` on the table.

    ``table`` is ``NAME`` or ``SCHEMA.NAME`` (default ``lambda_db_idempotency``); pass the
    same name to :func:`lambda_db.idempotent`.

    Example::

        with psycopg2.connect(dsn) as conn:       # commits when the block ends
            lambda_db.idempotency.ensure_schema(conn)
    """
    store = Store(table)
    own_transaction = bool(getattr(conn, "autocommit", False))
    with conn.cursor() as cur:
        if not own_transaction:
            store.create(cur)
            return
        cur.execute("BEGIN")
        try:
            store.create(cur)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def delete_expired(conn: Any, *, table: str = DEFAULT_TABLE, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired idempotency records, oldest first; return how many.

    Claims under READ COMMITTED already delete a few expired records each; functions that
    run under REPEATABLE READ or SERIALIZABLE delete none, so call this from a scheduled
    job (in autocommit, or commit afterwards) to keep the table small. Rows locked by a
    running invocation are skipped, never waited for.

    Example::

        @with_connection(autocommit=True)
        def cleanup(event, context):
            return lambda_db.idempotency.delete_expired(lambda_db.get_connection())
    """
    with conn.cursor() as cur:
        return Store(table).sweep(cur, limit)
