"""``process_batch``: an SQS, Kinesis or DynamoDB Streams batch in one transaction.

Each record runs in its own savepoint: a record that raises rolls back its own writes only,
the others commit together when the invocation does, and the return value is the partial
batch response Lambda expects with ``FunctionResponseTypes: [ReportBatchItemFailures]``.

On the wire, for records that succeed, one round trip per record besides its own
statements (the first ``SAVEPOINT``; then ``RELEASE SAVEPOINT ...; SAVEPOINT ...`` sent as
one query); a failure costs a ``ROLLBACK TO SAVEPOINT``, after which the savepoint is
already in place for the next record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lambda_db._classify import brief, conflict
from lambda_db._driver import INERROR
from lambda_db.errors import ConfigurationError

if TYPE_CHECKING:
    from lambda_db.database import Database

__all__ = ["process_batch"]

logger = logging.getLogger(__name__)

_SAVEPOINT = "SAVEPOINT lambda_db_record"
_NEXT = "RELEASE SAVEPOINT lambda_db_record; SAVEPOINT lambda_db_record"
_UNDO = "ROLLBACK TO SAVEPOINT lambda_db_record"

#: ``eventSource`` -> how a record is identified in ``batchItemFailures``.
_SOURCES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "aws:sqs": lambda record: record["messageId"],
    "aws:kinesis": lambda record: record["kinesis"]["sequenceNumber"],
    "aws:dynamodb": lambda record: record["dynamodb"]["SequenceNumber"],
}

BatchResponse = dict[str, list[dict[str, str]]]


def process_batch(
    event: Mapping[str, Any],
    record_handler: Callable[[dict[str, Any]], object],
    *,
    database: Database | None = None,
) -> BatchResponse:
    """Run ``record_handler(record)`` for each record of ``event``, each in a savepoint.

    Call it inside a ``@with_connection`` handler (in its transaction) and return what it
    returns. For SQS, Kinesis and DynamoDB Streams events:

    * one transaction for the batch, one savepoint per record: a record whose handler
      raises has its writes rolled back and is reported in ``batchItemFailures``; the
      other records' writes commit with the invocation;
    * ordered sources (a FIFO queue, Kinesis, DynamoDB Streams): at the first failure,
      processing stops and that record and every one after it are reported failed, so
      that Lambda delivers them again, in order;
    * a lost connection, the invocation's deadline, or a serialization failure or
      deadlock (which a savepoint cannot repair) fails the whole invocation: nothing
      commits, Lambda retries the batch, and ``with_connection``'s
      ``retry_serialization_failures`` applies;
    * a record handler may be :func:`lambda_db.idempotent` per record (say on the SQS
      ``messageId``): a batch delivered again then writes nothing twice.

    Records are processed in order; the record handler's return value is ignored.
    ``database``: the :class:`~lambda_db.Database` of the enclosing ``with_connection``.

    Example::

        @with_connection
        def handler(event, context):
            return process_batch(event, save_order)

        @idempotent("messageId", payload="body")
        def save_order(record):
            order = json.loads(record["body"])
            with get_connection().cursor() as cur:
                cur.execute("INSERT INTO orders (id, total) VALUES (%s, %s)",
                            (order["id"], order["total"]))
    """
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        raise TypeError("process_batch needs an SQS, Kinesis or DynamoDB Streams event")
    failures: list[dict[str, str]] = []
    if not records:
        return {"batchItemFailures": failures}
    source = records[0].get("eventSource") if isinstance(records[0], Mapping) else None
    identify = _SOURCES.get(str(source))
    if identify is None:
        raise ValueError(
            f"process_batch handles {', '.join(sorted(_SOURCES))} events, not eventSource "
            f"{source!r}"
        )
    ordered = source != "aws:sqs" or _fifo(records[0])
    if database is None:
        from lambda_db.handler import default_database

        database = default_database()
    db = database
    scope = db.current
    if scope is None or scope.autocommit:
        raise ConfigurationError(
            "process_batch runs each record in a savepoint of the invocation's transaction: "
            "call it inside a @with_connection handler (not autocommit=True), with the same "
            "database=",
            variable="process_batch",
        )
    conn = scope.connection
    driver = db.driver
    pending: str | None = _SAVEPOINT
    stopped = False
    for position, record in enumerate(records, 1):
        identifier = identify(record)
        if stopped:
            failures.append({"itemIdentifier": identifier})
            continue
        with conn.cursor() as cur:
            if pending is not None:
                cur.execute(pending)
            try:
                record_handler(record)
                _check_not_aborted(driver, conn)
            except Exception as exc:
                if driver.closed(conn) or conflict(exc, driver):
                    raise  # no savepoint repairs these: the whole batch fails
                cur.execute(_UNDO)
                failures.append({"itemIdentifier": identifier})
                logger.warning(
                    "record %d of %d (%s) failed and was rolled back: %s",
                    position, len(records), identifier, brief(exc),
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )  # fmt: skip
                pending = None  # the savepoint is in place again
                stopped = ordered
                continue
        pending = _NEXT
    if failures:
        db.emit("BatchItemFailures", len(failures))
    return {"batchItemFailures": failures}


class AbortedRecordError(Exception):
    """A record handler swallowed a database error: the record counts as failed."""


def _check_not_aborted(driver: Any, conn: Any) -> None:
    """A record handler that caught a database error and returned left the transaction
    aborted: its later statements did nothing, and the next record's ``RELEASE`` would fail.
    That is the record's failure (and the savepoint repairs it)."""
    if driver.status(conn) == INERROR:
        raise AbortedRecordError(
            "the record handler returned after a database error it caught: its statements "
            "were rolled back"
        )


def _fifo(record: Mapping[str, Any]) -> bool:
    """An SQS record from a FIFO queue (it has a message group; its queue ends in ``.fifo``).

    >>> _fifo({"attributes": {"MessageGroupId": "g"}})
    True
    >>> _fifo({"attributes": {}, "eventSourceARN": "arn:aws:sqs:us-east-1:1:orders"})
    False
    """
    attributes = record.get("attributes") or {}
    arn = str(record.get("eventSourceARN", ""))
    return "MessageGroupId" in attributes or arn.endswith(".fifo")
