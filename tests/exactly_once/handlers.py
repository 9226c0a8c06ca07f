"""Handlers the exactly-once tests import into other processes (``lambda_db_lab.at_once``):
they configure themselves from the environment, as a deployed function does."""

from __future__ import annotations

import os
from typing import Any

from lambda_db import get_connection, idempotent, with_connection


@with_connection
@idempotent("order_id")
def hold_order(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Insert the order, then hold the transaction ``event["hold"]`` seconds."""
    with get_connection().cursor() as cur:
        cur.execute(
            "INSERT INTO orders (order_id, note) VALUES (%s, %s) RETURNING id",
            (event["order_id"], f"pid {os.getpid()}"),
        )
        row = cur.fetchone()
        cur.execute("SELECT pg_sleep(%s)", (event.get("hold", 0.3),))
    return {"id": row[0] if row else None, "ran_in": os.getpid()}
