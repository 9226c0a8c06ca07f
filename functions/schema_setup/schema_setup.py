"""Schema setup: a CloudFormation custom resource that creates the items table.

* ``Create`` and ``Update`` run the migration: idempotent statements (``CREATE ... IF NOT
  EXISTS``) in one transaction under an advisory lock, so running it twice, or twice at
  once, is safe.
* ``Delete`` succeeds without touching the database: the data outlives the stack (the
  instance's final snapshot keeps it), and the database may already be unreachable.

CloudFormation waits for an answer PUT to the pre-signed ``ResponseURL`` (up to an hour
if none comes), so one is always sent, SUCCESS or FAILED, whatever happens. The
function's ``DB_DEADLINE_MARGIN`` (template.yaml) keeps 30 seconds of its timeout free
for that: lambda_db's connection retries stop there.

Like the other functions it logs in to RDS Proxy with an IAM token: it never reads the
database secret.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

import lambda_db
from lambda_db import with_connection

logger = Logger()

PHYSICAL_RESOURCE_ID = "lambda-db-schema"
RESPONSE_TIMEOUT = 10.0
MAX_REASON_LENGTH = 1000

MIGRATION = (
    # Serializes concurrent runs (an Update racing a retry).
    "SELECT pg_advisory_xact_lock(hashtext('lambda-db schema'))",
    """
    CREATE TABLE IF NOT EXISTS items (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name        text NOT NULL,
        description text NOT NULL DEFAULT '',
        quantity    integer NOT NULL DEFAULT 0 CHECK (quantity >= 0),
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
    )
    """,
)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Handle one custom resource request; return the answer sent to CloudFormation."""
    request_type = event.get("RequestType")
    status, reason = "SUCCESS", ""
    try:
        if request_type in ("Create", "Update"):
            migrate(event, context)
            logger.info("schema is up to date", extra={"request_type": request_type})
        elif request_type == "Delete":
            logger.info("delete: the table and its data are kept")
        else:
            status, reason = "FAILED", f"unknown RequestType {request_type!r}"
    except Exception as exc:
        logger.exception("schema setup failed")
        status = "FAILED"
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]
    answer = _answer(event, context, status, reason)
    _send(event.get("ResponseURL"), answer)
    return answer


@with_connection
def migrate(event: dict[str, Any], context: LambdaContext) -> None:
    """Run the idempotent migration in the invocation's transaction."""
    with lambda_db.get_connection().cursor() as cur:
        for statement in MIGRATION:
            cur.execute(statement)


def _answer(
    event: dict[str, Any], context: LambdaContext, status: str, reason: str
) -> dict[str, Any]:
    if status == "FAILED":
        reason = f"{reason} (log stream {context.log_stream_name})"
    return {
        "Status": status,
        "Reason": reason,
        # Stable across updates: a new id would make CloudFormation delete the old one.
        "PhysicalResourceId": event.get("PhysicalResourceId") or PHYSICAL_RESOURCE_ID,
        "StackId": event.get("StackId", ""),
        "RequestId": event.get("RequestId", ""),
        "LogicalResourceId": event.get("LogicalResourceId", ""),
        "NoEcho": False,
        "Data": {"Table": "items"},
    }


def _send(url: Any, answer: dict[str, Any]) -> bool:
    """PUT the answer to CloudFormation's pre-signed URL; False (logged) when it fails."""
    if not isinstance(url, str) or not _allowed_url(url):
        logger.error("no usable ResponseURL in the event; CloudFormation gets no answer")
        return False
    body = json.dumps(answer).encode()
    # The URL is pre-signed for an empty Content-Type.
    headers = {"Content-Type": "", "Content-Length": str(len(body))}
    # The scheme is checked above: https, or http to a loopback host.
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT) as response:  # noqa: S310
            logger.info(
                "answered CloudFormation",
                extra={"status": answer["Status"], "http": response.status},
            )
    except (urllib.error.URLError, OSError):
        logger.exception("could not answer CloudFormation")
        return False
    return True


def _allowed_url(url: str) -> bool:
    """https anywhere; plain http only to a loopback host (local tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False
