"""``PostgresPersistenceLayer``: Powertools' own ``@idempotent`` with its records in PostgreSQL.

Powertools' protocol, unchanged: an INPROGRESS record committed before the handler, the
result committed after it. The last test shows what that means: the record is not atomic
with the handler's writes (``lambda_db.idempotent`` is)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency import idempotent as powertools_idempotent
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from lambda_db import ConfigurationError, Database, with_connection
from lambda_db.idempotency import PostgresPersistenceLayer
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.exactly_once.conftest import insert_order, order_count

Handler = Callable[[dict[str, Any], Any], Any]


def powertools_handler(db: Database, runs: list[str], *, below: bool = False,
                       **config: Any) -> Handler:  # fmt: skip
    """Powertools' @idempotent above @with_connection (or below it, wrongly, with ``below``)."""
    persistence = PostgresPersistenceLayer(database=db)
    idempotency = powertools_idempotent(
        persistence_store=persistence,
        config=IdempotencyConfig(event_key_jmespath="order_id", **config),
    )

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append(event["order_id"])
        order = insert_order(db.get_connection(), event["order_id"])
        if event.get("fail"):
            raise RuntimeError("failed after writing")
        if "then" in event:
            event["then"]()
        return {"id": order, "big": "x" * event.get("size", 0)}

    scoped = with_connection(database=db)
    return scoped(idempotency(handler)) if below else idempotency(scoped(handler))


def record(app_db: AppDb) -> tuple[Any, ...]:
    ((status, result, expires_in, in_progress),) = app_db.query(
        "SELECT status, result, extract(epoch FROM expires_at - now()),"
        " in_progress_expires_at IS NOT NULL FROM lambda_db_idempotency"
    )
    return status, result, float(expires_in), in_progress


def test_a_repeat_returns_the_stored_response(db: Database, orders_db: AppDb) -> None:
    runs: list[str] = []
    handler = powertools_handler(db, runs, expires_after_seconds=600)
    first = handler({"order_id": "U-1"}, LambdaContext())
    assert handler({"order_id": "U-1"}, LambdaContext()) == first == {"id": 1, "big": ""}
    assert runs == ["U-1"]
    status, result, expires_in, in_progress = record(orders_db)
    assert status == "COMPLETED" and result is not None and '"id": 1' in result
    assert 590 < expires_in <= 601
    assert in_progress  # Powertools sets it from the context's time left


def test_a_handler_that_raises_deletes_its_record(db: Database, orders_db: AppDb) -> None:
    runs: list[str] = []
    handler = powertools_handler(db, runs)
    with pytest.raises(RuntimeError):
        handler({"order_id": "V-1", "fail": True}, LambdaContext())
    assert orders_db.query("SELECT count(*) FROM lambda_db_idempotency") == [(0,)]
    handler({"order_id": "V-1"}, LambdaContext())
    assert runs == ["V-1", "V-1"]


def test_in_progress_is_refused_until_its_in_progress_expiry(
    db: Database, orders_db: AppDb
) -> None:
    runs: list[str] = []
    handler = powertools_handler(db, runs)
    handler({"order_id": "W-1"}, LambdaContext())
    orders_db.query(
        "UPDATE lambda_db_idempotency SET status = 'INPROGRESS', result = NULL,"
        " in_progress_expires_at = now() + interval '1 minute'"
    )
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"order_id": "W-1"}, LambdaContext())
    orders_db.query(
        "UPDATE lambda_db_idempotency SET in_progress_expires_at = now() - interval '1 second'"
    )
    handler({"order_id": "W-1"}, LambdaContext())  # an orphan: taken over
    assert runs == ["W-1", "W-1"]
    assert record(orders_db)[0] == "COMPLETED"


def test_an_expired_record_is_taken_over(db: Database, orders_db: AppDb) -> None:
    runs: list[str] = []
    handler = powertools_handler(db, runs)
    handler({"order_id": "X-1"}, LambdaContext())
    orders_db.query("UPDATE lambda_db_idempotency SET expires_at = now() - interval '1 second'")
    handler({"order_id": "X-1"}, LambdaContext())
    assert runs == ["X-1", "X-1"]


def test_payload_validation(db: Database, orders_db: AppDb) -> None:
    handler = powertools_handler(db, [], payload_validation_jmespath="note")
    handler({"order_id": "Y-1", "note": "a"}, LambdaContext())
    with pytest.raises(IdempotencyValidationError):
        handler({"order_id": "Y-1", "note": "b"}, LambdaContext())


def test_a_large_response_is_stored_whole(db: Database, orders_db: AppDb) -> None:
    handler = powertools_handler(db, [])
    first = handler({"order_id": "Z-1", "size": 50_000}, LambdaContext())
    assert handler({"order_id": "Z-1", "size": 50_000}, LambdaContext()) == first
    assert len(first["big"]) == 50_000


def test_below_with_connection_it_refuses(db: Database, orders_db: AppDb) -> None:
    runs: list[str] = []
    handler = powertools_handler(db, runs, below=True)
    with pytest.raises(IdempotencyPersistenceLayerError) as info:
        handler({"order_id": "AA-1"}, LambdaContext())
    assert isinstance(info.value.__cause__, ConfigurationError)
    assert "above @with_connection" in str(info.value.__cause__)
    assert runs == []
    assert order_count(orders_db) == 0


def test_not_atomic_the_writes_commit_and_the_record_stays_in_progress(
    db: Database, orders_db: AppDb
) -> None:
    """The window lambda_db.idempotent closes: the handler's transaction committed, then
    saving the result failed. The order exists; its record says INPROGRESS."""
    runs: list[str] = []
    handler = powertools_handler(db, runs)

    def break_the_table() -> None:  # as if the save's connection were lost
        orders_db.query("ALTER TABLE lambda_db_idempotency RENAME TO elsewhere")

    with pytest.raises(IdempotencyPersistenceLayerError):
        handler({"order_id": "AB-1", "then": break_the_table}, LambdaContext())
    orders_db.query("ALTER TABLE elsewhere RENAME TO lambda_db_idempotency")
    assert order_count(orders_db) == 1  # committed
    assert record(orders_db)[0] == "INPROGRESS"  # and not recorded as done
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"order_id": "AB-1"}, LambdaContext())
