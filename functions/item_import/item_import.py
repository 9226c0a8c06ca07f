"""Item import: an SQS-triggered function that creates one item per message.

A message body is the items API's JSON object: ``{"name": str, "description"?: str,
"quantity"?: int}``. Each batch is one transaction (``@with_connection``) and each message
a savepoint in it (``lambda_db.process_batch``): a message that fails (a body that is not a
valid item) is rolled back alone and reported in ``batchItemFailures``, so SQS delivers it
again, and after ``maxReceiveCount`` receives moves it to the dead-letter queue; the other
messages' items commit together.

Each message is idempotent on its ``messageId`` (``lambda_db.idempotent``, in the same
savepoint): a batch delivered again (a lost COMMIT, a function timeout after the commit, a
visibility timeout that ran out) creates no item twice. Keys are kept as long as the queue
keeps a message (``KEY_EXPIRES_AFTER``, the queue's ``MessageRetentionPeriod``).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambda_db import get_connection, idempotent, process_batch, with_connection

logger = Logger()

#: Seconds a message's key is kept: the queue's MessageRetentionPeriod (template.yaml).
KEY_EXPIRES_AFTER = 4 * 24 * 60 * 60.0
MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_QUANTITY = 2**31 - 1


class InvalidMessage(ValueError):
    """A message body that is not an item (the message fails; SQS retries, then dead-letters)."""


@logger.inject_lambda_context(clear_state=True)
@with_connection
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda entry point: the batch in one transaction, a partial batch response back."""
    return process_batch(event, import_item)


@idempotent("messageId", payload="body", expires_after=KEY_EXPIRES_AFTER)
def import_item(record: dict[str, Any]) -> dict[str, int]:
    """Create the item a message describes; its id is stored with the message's key."""
    name, description, quantity = parse(record.get("body"))
    with get_connection().cursor() as cur:
        cur.execute(
            "INSERT INTO items (name, description, quantity) VALUES (%s, %s, %s) RETURNING id",
            (name, description, quantity),
        )
        row = cur.fetchone()
    if row is None:  # RETURNING always yields a row; this keeps the types honest
        raise RuntimeError("expected a row")
    logger.info("imported an item", extra={"item_id": row[0], "message_id": record["messageId"]})
    return {"id": row[0]}


def parse(body: Any) -> tuple[str, str, int]:
    """(name, description, quantity) from a message body, or :class:`InvalidMessage`.

    >>> parse('{"name": "Widget", "quantity": 3}')
    ('Widget', '', 3)
    >>> parse('{"name": ""}')
    Traceback (most recent call last):
    item_import.InvalidMessage: name must be a non-blank string of at most 200 characters
    """
    try:
        doc = json.loads(body) if isinstance(body, str) else None
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("the message body is not JSON") from exc
    if not isinstance(doc, dict) or set(doc) - {"name", "description", "quantity"}:
        raise InvalidMessage("the message body must be an object of name, description, quantity")
    name, description, quantity = (
        doc.get("name"),
        doc.get("description", ""),
        doc.get("quantity", 0),
    )
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidMessage(f"name must be a non-blank string of at most {MAX_NAME} characters")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidMessage(
            f"description must be a string of at most {MAX_DESCRIPTION} characters"
        )
    if "\x00" in name + description:
        raise InvalidMessage("text must not contain NUL characters")
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not 0 <= quantity <= MAX_QUANTITY
    ):
        raise InvalidMessage(f"quantity must be an integer from 0 to {MAX_QUANTITY}")
    return name.strip(), description, quantity
