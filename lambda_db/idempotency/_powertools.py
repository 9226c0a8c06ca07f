"""A Powertools ``BasePersistenceLayer`` that keeps Powertools' idempotency records in PostgreSQL.

For teams that already use Powertools' ``@idempotent`` and would rather keep its records in
their PostgreSQL database than in DynamoDB or Redis. Powertools drives the protocol: it
writes an ``INPROGRESS`` record before the handler runs, the result after it returns, and
deletes the record when it raises. Each of those writes is committed on its own, in a short
transaction of this layer, on lambda-db's one connection per environment.

**Not atomic with the handler's writes.** This is Powertools' protocol, unchanged: if the
function dies after the handler committed but before the result is saved (a timeout, a
lost connection), the record stays ``INPROGRESS`` until its in-progress expiry, and a retry
then runs the handler again. :func:`lambda_db.idempotent` has no such window: its record is
part of the handler's own transaction. A concurrent duplicate gets Powertools'
``IdempotencyAlreadyInProgressError`` at once (no waiting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from lambda_db.errors import ConfigurationError
from lambda_db.idempotency._store import DEFAULT_TABLE, Record, Store

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.config import IdempotencyConfig

    from lambda_db.database import Database

__all__ = ["PostgresPersistenceLayer"]

T = TypeVar("T")


class PostgresPersistenceLayer(BasePersistenceLayer):
    """Powertools idempotency records in a PostgreSQL table, over lambda-db's connection.

    ``table`` is the table :func:`lambda_db.idempotency.ensure_schema` created (the same
    table ``lambda_db.idempotent`` uses; the keys never collide). ``database``: the
    :class:`~lambda_db.Database` to use (default: the default one).

    Each operation is one short transaction of its own on the environment's connection, so
    it cannot run while a ``@with_connection`` invocation holds that connection's
    transaction: place Powertools' ``@idempotent`` **above** ``@with_connection``. Placed
    below it (or used with ``@idempotent_function`` inside the handler) it raises
    :class:`~lambda_db.ConfigurationError`, unless ``database`` is a second
    :class:`~lambda_db.Database` (one more connection per environment).

    Expiry is Powertools' (epoch seconds from the function's clock), compared with the
    database's ``now()``: keep both clocks right (NTP).

    Example::

        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
        from lambda_db.idempotency import PostgresPersistenceLayer

        persistence = PostgresPersistenceLayer()

        @idempotent(persistence_store=persistence,
                    config=IdempotencyConfig(event_key_jmespath="order_id"))
        @with_connection
        def handler(event, context):
            ...
    """

    def __init__(self, *, table: str = DEFAULT_TABLE, database: Database | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._store = Store(table)
        self._database = database
        self._config: IdempotencyConfig | None = None

    def configure(
        self,
        config: IdempotencyConfig,
        function_name: str | None = None,
        key_prefix: str | None = None,
    ) -> None:
        """Powertools' configuration step; the config also carries the Lambda context."""
        self._config = config
        super().configure(config, function_name, key_prefix)

    # -- BasePersistenceLayer ------------------------------------------------------------

    def _get_record(self, idempotency_key: str) -> DataRecord:
        record = self._run(lambda cur: self._store.fetch_any(cur, idempotency_key))
        if record is None:
            raise IdempotencyItemNotFoundError
        return _data_record(idempotency_key, record)

    def _put_record(self, data_record: DataRecord) -> None:
        in_progress = data_record.in_progress_expiry_timestamp
        claimed, existing = self._run(
            lambda cur: self._store.put_in_progress(
                cur,
                data_record.idempotency_key,
                data_record.payload_hash or "",
                float(data_record.expiry_timestamp or 0),
                None if in_progress is None else in_progress / 1000.0,
            )
        )
        if claimed:
            return
        if existing is None:  # committed while this statement waited: Powertools reads it
            raise IdempotencyItemAlreadyExistsError
        old = _data_record(data_record.idempotency_key, existing)
        # Handing the record back skips Powertools' get_record, which validates the payload:
        # validate here, as its DynamoDB layer does.
        self._validate_payload(data_payload=data_record, stored_data_record=old)
        self._save_to_cache(data_record=old)
        raise IdempotencyItemAlreadyExistsError(old_data_record=old)

    def _update_record(self, data_record: DataRecord) -> None:
        def update(cur: Any) -> None:
            self._store.update(
                cur,
                data_record.idempotency_key,
                data_record.status,
                data_record.payload_hash or "",
                float(data_record.expiry_timestamp or 0),
                data_record.response_data or "",
            )

        # A large result is written in several statements: in one transaction, so that
        # no reader ever sees half of it.
        self._run(update, transaction=True)

    def _delete_record(self, data_record: DataRecord) -> None:
        self._run(lambda cur: self._store.delete(cur, data_record.idempotency_key))

    # -- one short transaction on lambda-db's connection ------------------------------------

    def _run(self, action: Callable[[Any], T], *, transaction: bool = False) -> T:
        db = self._database
        if db is None:
            from lambda_db.handler import default_database

            db = default_database()
        if db.current is not None:
            raise ConfigurationError(
                "PostgresPersistenceLayer commits its records in transactions of its own, "
                "and this Database's connection is inside a @with_connection invocation: "
                "place Powertools' @idempotent above @with_connection, pass database= a "
                "second Database, or use lambda_db.idempotent (atomic with the handler's "
                "writes)",
                variable="PostgresPersistenceLayer",
            )
        context = self._config.lambda_context if self._config is not None else None
        with (
            db.invocation(context, autocommit=not transaction) as scope,
            scope.connection.cursor() as cur,
        ):
            return action(cur)


def _data_record(key: str, record: Record) -> DataRecord:
    in_progress = record.in_progress_expires_at
    return DataRecord(
        idempotency_key=key,
        status=record.status,
        expiry_timestamp=int(record.expires_at),
        in_progress_expiry_timestamp=None if in_progress is None else int(in_progress * 1000),
        response_data=record.result or "",
        payload_hash=record.payload_hash,
    )
