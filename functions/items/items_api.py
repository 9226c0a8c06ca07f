"""Items API: list, get, create, update and delete items over API Gateway (REST).

Routes (Powertools ``APIGatewayRestResolver``)::

    GET    /items?limit=N&next_token=T  a page of items, oldest first, and the next token
    POST   /items                       create {"name": str, "description"?: str, "quantity"?: int}
    GET    /items/{id}                  one item
    PUT    /items/{id}                  replace name, description and quantity
    DELETE /items/{id}                  delete (204)

Every response body is JSON. Client mistakes are 4xx ``{"message": ...}``; a database
that is full, unreachable or lost mid-request is ``503`` with ``Retry-After``, except a
``POST`` without an ``Idempotency-Key`` whose COMMIT was cut (its outcome is unknown:
``500``, no ``Retry-After``, so a client checks before it retries); anything else is a
``500`` whose body says nothing about the cause (the log has the traceback).
The transaction commits when the handler returns and rolls back when it raises
(``@with_connection``), so no request leaves its connection ``idle in transaction``.

``Idempotency-Key`` (POST and PUT, 1 to 255 printable ASCII characters): the response is
stored in the request's own transaction (``lambda_db.idempotent``), so a retry with the
same key gets the original response (the same ``201`` and the same item) and never
writes twice, even after a COMMIT whose answer was lost; a key reused with another
method, path or body is a ``422``; a retry that arrives while the first request still
runs waits for it, up to the role's ``lock_timeout`` (then ``409`` with ``Retry-After``).
Keys are kept 24 hours.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

import lambda_db
from lambda_db import (
    ConnectionLimitError,
    ConnectionLostError,
    DatabaseUnavailableError,
    IdempotencyMismatchError,
    idempotent,
    with_connection,
)

logger = Logger()
app = APIGatewayRestResolver()

MAX_BODY_BYTES = 16 * 1024
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 2000
MAX_QUANTITY = 2**31 - 1
MAX_ID = 2**63 - 1
MAX_TOKEN_LENGTH = 200
TOKEN_VERSION = 1
#: Seconds a client should wait before retrying a 503: a full server frees slots within
#: seconds; a lost connection is replaced on the next request.
RETRY_AFTER_LIMIT = 5
RETRY_AFTER_UNAVAILABLE = 1
#: SQLSTATE of lock_timeout (the application role has one: template.yaml's AppLockTimeoutMs).
LOCK_NOT_AVAILABLE = "55P03"
#: Methods a client may repeat safely when a COMMIT's outcome is unknown.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: The header that makes a POST or PUT safe to retry, and what it may hold.
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_METHODS = frozenset({"POST", "PUT"})
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Seconds a key's response is replayed (clients retry within minutes; a day is generous).
IDEMPOTENCY_EXPIRES_AFTER = 24 * 60 * 60.0

FIELDS = ("name", "description", "quantity")
COLUMNS = "id, name, description, quantity, created_at, updated_at"
JSON_HEADERS = {"Content-Type": "application/json"}


class RequestError(Exception):
    """A request this API refuses: becomes ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- routes


@app.get("/items")
def list_items() -> Response[str]:
    event = app.current_event
    limit = _page_size(event.get_query_string_value("limit"))
    after = _decode_token(event.get_query_string_value("next_token"))
    with lambda_db.get_connection().cursor() as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM items WHERE id > %s ORDER BY id LIMIT %s",
            (after, limit + 1),
        )
        rows = cur.fetchall()
    items = [_item(row) for row in rows[:limit]]
    next_token = _encode_token(items[-1]["id"]) if len(rows) > limit else None
    return _json(200, {"items": items, "next_token": next_token})


@app.post("/items")
def create_item() -> Response[str]:
    name, description, quantity = _item_fields(_read_body())
    with lambda_db.get_connection().cursor() as cur:
        cur.execute(
            f"INSERT INTO items (name, description, quantity) VALUES (%s, %s, %s)"
            f" RETURNING {COLUMNS}",
            (name, description, quantity),
        )
        item = _item(cur.fetchone())
    return _json(201, item, headers={"Location": f"/items/{item['id']}"})


@app.get("/items/<item_id>")
def get_item(item_id: str) -> Response[str]:
    key = _item_id(item_id)
    return _one_item(key, f"SELECT {COLUMNS} FROM items WHERE id = %s", (key,))


@app.put("/items/<item_id>")
def update_item(item_id: str) -> Response[str]:
    key = _item_id(item_id)
    name, description, quantity = _item_fields(_read_body())
    return _one_item(
        key,
        "UPDATE items SET name = %s, description = %s, quantity = %s, updated_at = now()"
        f" WHERE id = %s RETURNING {COLUMNS}",
        (name, description, quantity, key),
    )


@app.delete("/items/<item_id>")
def delete_item(item_id: str) -> Response[str]:
    key = _item_id(item_id)
    with lambda_db.get_connection().cursor() as cur:
        cur.execute("DELETE FROM items WHERE id = %s", (key,))
        deleted = cur.rowcount
    if deleted == 0:
        raise RequestError(404, f"item {key} does not exist")
    return Response(status_code=204, headers={})


@app.exception_handler(RequestError)  # type: ignore[untyped-decorator]
def _client_error(exc: RequestError) -> Response[str]:
    return _json(exc.status, {"message": exc.message})


@app.not_found
def _no_route(exc: Exception) -> Response[str]:
    event = app.current_event
    return _json(404, {"message": f"no route for {event.http_method} {event.path}"})


# --------------------------------------------------------------------------- handler


def _http_errors(handler: Callable[[Any, Any], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Turn what escapes the transaction into an HTTP answer (after the rollback).

    ``DatabaseUnavailableError`` (and its ``ConnectionLimitError``/``ConnectionLostError``)
    means "retry later": 503 with ``Retry-After``, except a lost COMMIT of a
    non-idempotent request (500: its outcome is unknown). Anything else is a 500 that
    names nothing; the traceback goes to the log only.
    """

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> dict[str, Any]:
        try:
            return handler(event, context)
        except RequestError as exc:  # a malformed Idempotency-Key
            return _proxy_response(exc.status, {"message": exc.message})
        except ErrorResponse as refused:  # a 4xx or 5xx: rolled back, its key not spent
            return refused.response
        except IdempotencyMismatchError:
            return _proxy_response(
                422,
                {
                    "message": f"this {IDEMPOTENCY_HEADER} was used for a different request "
                    "(method, path or body); use a new key for a new request"
                },
            )
        except ConnectionLostError as exc:
            method = event.get("httpMethod") if isinstance(event, dict) else None
            if not exc.outcome_unknown or method in IDEMPOTENT_METHODS or _has_key(event):
                # With an Idempotency-Key a retry returns what committed, or runs once.
                return _unavailable(exc)
            # The COMMIT of a create may have happened: a blind retry could duplicate it.
            logger.exception("connection lost during COMMIT")
            return _proxy_response(
                500,
                {
                    "message": "the outcome of this request is unknown; check before "
                    f"retrying (an {IDEMPOTENCY_HEADER} header makes retries safe)"
                },
            )
        except DatabaseUnavailableError as exc:
            return _unavailable(exc)
        except Exception as exc:
            info = lambda_db.default_database().driver.error_info(exc)
            if info is not None and info.sqlstate == LOCK_NOT_AVAILABLE:
                # The role's lock_timeout: a concurrent request holds the row (or the same
                # Idempotency-Key) longer than it allows. Nothing was written.
                logger.warning("lock_timeout: %s", exc)
                return _proxy_response(
                    409,
                    {
                        "message": "a concurrent request on the same item or "
                        f"{IDEMPOTENCY_HEADER} is still running; retry later"
                    },
                    {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
                )
            logger.exception("unhandled error")
            return _proxy_response(500, {"message": "internal error"})

    return wrapper


def _unavailable(exc: DatabaseUnavailableError) -> dict[str, Any]:
    """503 with ``Retry-After``: the database is full or unreachable; nothing was written."""
    logger.warning("database unavailable: %s", exc, extra={"error": type(exc).__name__})
    retry_after = (
        RETRY_AFTER_LIMIT if isinstance(exc, ConnectionLimitError) else RETRY_AFTER_UNAVAILABLE
    )
    return _proxy_response(
        503,
        {"message": "the database is busy or unreachable; retry later"},
        {"Retry-After": str(retry_after)},
    )


def _idempotency_key(event: Any) -> str | None:
    """The ``Idempotency-Key`` of a POST or PUT (headers are case-insensitive), or ``None``."""
    if not isinstance(event, dict) or event.get("httpMethod") not in IDEMPOTENCY_METHODS:
        return None
    headers = event.get("headers") or {}
    wanted = IDEMPOTENCY_HEADER.lower()
    value = next((v for k, v in headers.items() if str(k).lower() == wanted), None)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_IDEMPOTENCY_KEY_LENGTH
        or not (value.isascii() and value.isprintable())
    ):
        raise RequestError(
            400,
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII "
            "characters",
        )
    return value


def _has_key(event: Any) -> bool:
    try:
        return _idempotency_key(event) is not None
    except RequestError:
        return False


def _request(event: Any) -> list[Any]:
    """What a key's retries must repeat: method, path and body. A JSON body counts by its
    content (key order and spacing may differ between retries), anything else by its text."""
    body = event.get("body")
    if isinstance(body, str) and not event.get("isBase64Encoded"):
        # Not JSON: the handler answers 400, and a retry must send the same text.
        with contextlib.suppress(ValueError, RecursionError):
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    return [event.get("httpMethod"), event.get("path"), body, event.get("isBase64Encoded")]


class ErrorResponse(Exception):
    """An error answer (4xx, or a 500 the resolver made of a route's exception, as it does
    with ``POWERTOOLS_DEV``), raised so that the invocation rolls back and stores no
    idempotency record: a client who fixes a refused request may retry it with the same
    key, and a failed one commits nothing of what it wrote before failing."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(response.get("statusCode"))
        self.response = response


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True
)
@_http_errors
@with_connection
@idempotent(_idempotency_key, payload=_request, expires_after=IDEMPOTENCY_EXPIRES_AFTER)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda entry point: one transaction per request (and per Idempotency-Key)."""
    response = app.resolve(event, context)
    if int(response.get("statusCode", 200)) >= 400:
        raise ErrorResponse(response)
    return response


# --------------------------------------------------------------------------- helpers


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response[str]:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(body, separators=(",", ":")),
        headers=dict(headers or {}),
    )


def _proxy_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway proxy result built without the resolver (outside the transaction)."""
    return {
        "statusCode": status,
        "headers": {**JSON_HEADERS, **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def _one_item(key: int, sql: str, params: tuple[Any, ...]) -> Response[str]:
    """200 with the row ``sql`` returns for item ``key``; 404 when it returns none."""
    with lambda_db.get_connection().cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    if row is None:
        raise RequestError(404, f"item {key} does not exist")
    return _json(200, _item(row))


def _item(row: tuple[Any, ...] | None) -> dict[str, Any]:
    if row is None:  # RETURNING always yields a row; this keeps the types honest
        raise RuntimeError("expected a row")
    item_id, name, description, quantity, created_at, updated_at = row
    return {
        "id": item_id,
        "name": name,
        "description": description,
        "quantity": quantity,
        "created_at": _timestamp(created_at),
        "updated_at": _timestamp(updated_at),
    }


def _timestamp(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).isoformat()


def _item_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise RequestError(400, "an item id is a positive integer")
    key = int(raw)
    if not 0 < key <= MAX_ID:
        raise RequestError(404, f"item {key} does not exist")
    return key


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw) > len(str(MAX_PAGE_SIZE))  # int() of a huge string is a ValueError
        or not 1 <= int(raw) <= MAX_PAGE_SIZE
    ):
        raise RequestError(400, f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def _encode_token(last_id: int) -> str:
    """An opaque cursor: the last id of the page, versioned, base64url without padding."""
    raw = json.dumps({"v": TOKEN_VERSION, "after": last_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> int:
    """The id to continue after; 0 for the first page. Anything we did not issue is a 400."""
    if token is None or token == "":
        return 0
    bad = RequestError(400, "next_token is not a token this API issued")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise bad
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        doc = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise bad from exc
    after = doc.get("after") if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or doc.get("v") != TOKEN_VERSION
        or set(doc) != {"v", "after"}
        or not isinstance(after, int)
        or isinstance(after, bool)
        or not 0 < after <= MAX_ID
    ):
        raise bad
    return after


def _read_body() -> dict[str, Any]:
    event = app.current_event
    body = event.body
    if body is None or body == "":
        raise RequestError(400, "the request needs a JSON object body")
    try:
        data = base64.b64decode(body, validate=True) if event.is_base64_encoded else body.encode()
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise RequestError(400, "the request body is not valid base64") from exc
    if len(data) > MAX_BODY_BYTES:
        raise RequestError(
            413, f"the request body is {len(data)} bytes; the limit is {MAX_BODY_BYTES}"
        )
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise RequestError(400, "the request body is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return doc


def _item_fields(doc: Mapping[str, Any]) -> tuple[str, str, int]:
    unknown = sorted(key for key in doc if key not in FIELDS)
    if unknown:
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        raise RequestError(400, f"unknown field(s): {shown}; allowed: {', '.join(FIELDS)}")
    if "name" not in doc:
        raise RequestError(400, "name is required")
    name = _text(doc["name"], "name", MAX_NAME_LENGTH).strip()
    if not name:
        raise RequestError(400, "name must not be blank")
    description = _text(doc.get("description", ""), "description", MAX_DESCRIPTION_LENGTH)
    quantity = doc.get("quantity", 0)
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise RequestError(400, "quantity must be an integer")
    if not 0 <= quantity <= MAX_QUANTITY:
        raise RequestError(400, f"quantity must be from 0 to {MAX_QUANTITY}")
    return name, description, quantity


def _text(value: Any, field: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise RequestError(400, f"{field} must be a string")
    if len(value) > max_length:
        raise RequestError(400, f"{field} is longer than {max_length} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise RequestError(400, f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")  # lone surrogates ("\ud800") parse as JSON but cannot be stored
    except UnicodeEncodeError as exc:
        raise RequestError(400, f"{field} is not valid Unicode text") from exc
    return value
