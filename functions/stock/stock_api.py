"""Stock API: read and adjust an item's stock with the SQLAlchemy ORM, over API Gateway (REST).

Routes (Powertools ``APIGatewayRestResolver``), on the items API's table::

    GET  /items/{id}/stock     the item's quantity
    POST /items/{id}/stock     adjust it by {"delta": int}: 200 with the new quantity, 409
                               when it would fall below 0 or pass the maximum

The database is reached through ``lambda_db.sqlalchemy``: ``@with_session`` gives each
request one ORM ``Session`` on lambda-db's one connection, commits when the handler returns
and rolls back when it raises. An adjustment locks the row (``SELECT ... FOR UPDATE``),
so concurrent adjustments queue instead of losing updates.

The bad-input behaviour is the items API's: every body is JSON; client mistakes are 4xx
``{"message": ...}`` answered before the database is touched; a database that is full,
unreachable or lost mid-request is ``503`` with ``Retry-After``, except an adjustment
whose COMMIT was cut (its outcome is unknown: ``500``, no ``Retry-After``: a client reads
the stock before it retries); anything else is a ``500`` that names nothing (the log has
the traceback).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from sqlalchemy import BigInteger, DateTime, Integer, func
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lambda_db import ConnectionLimitError, ConnectionLostError, DatabaseUnavailableError
from lambda_db.sqlalchemy import with_session

logger = Logger()
app = APIGatewayRestResolver()

MAX_BODY_BYTES = 4 * 1024
MAX_QUANTITY = 2**31 - 1
MAX_ID = 2**63 - 1
#: Seconds a client should wait before retrying a 503 (as the items API).
RETRY_AFTER_LIMIT = 5
RETRY_AFTER_UNAVAILABLE = 1
#: Methods a client may repeat safely when a COMMIT's outcome is unknown.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})
JSON_HEADERS = {"Content-Type": "application/json"}


class Base(DeclarativeBase):
    """The ORM's declarative base."""


class Item(Base):
    """The columns of ``items`` this API reads and writes (the schema setup owns the table)."""

    __tablename__ = "items"
    # The UPDATE returns the server's new updated_at (RETURNING): no second SELECT.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 (SQLAlchemy reads it as is)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), onupdate=func.now()
    )


class RequestError(Exception):
    """A request this API refuses: becomes ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- routes


@app.get("/items/<item_id>/stock")
def get_stock(item_id: str) -> Response[str]:
    key = _item_id(item_id)
    item = _session().get(Item, key)
    if item is None:
        raise RequestError(404, f"item {key} does not exist")
    return _json(200, _stock(item))


@app.post("/items/<item_id>/stock")
def adjust_stock(item_id: str) -> Response[str]:
    key = _item_id(item_id)
    delta = _delta(_read_body())
    session = _session()
    item = session.get(Item, key, with_for_update=True)  # adjustments of one item queue here
    if item is None:
        raise RequestError(404, f"item {key} does not exist")
    quantity = item.quantity + delta
    if not 0 <= quantity <= MAX_QUANTITY:
        raise RequestError(
            409,
            f"item {key} has {item.quantity} in stock: an adjustment of {delta} would take it "
            f"outside 0 to {MAX_QUANTITY}",
        )
    item.quantity = quantity  # updated_at = now() comes with the UPDATE (onupdate)
    session.flush()
    return _json(200, _stock(item))


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
    means "retry later": 503 with ``Retry-After``, except a lost COMMIT of an adjustment
    (500: its outcome is unknown). Anything else is a 500 that names nothing.
    """

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> dict[str, Any]:
        try:
            return handler(event, context)
        except ConnectionLostError as exc:
            method = event.get("httpMethod") if isinstance(event, dict) else None
            if not exc.outcome_unknown or method in IDEMPOTENT_METHODS:
                return _unavailable(exc)
            # The adjustment may have been committed: a blind retry could apply it twice.
            logger.exception("connection lost during COMMIT")
            return _proxy_response(
                500, {"message": "the outcome of this request is unknown; check before retrying"}
            )
        except DatabaseUnavailableError as exc:
            return _unavailable(exc)
        except Exception:
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


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True
)
@_http_errors
@with_session
def handler(event: dict[str, Any], context: LambdaContext, session: Session) -> dict[str, Any]:
    """Lambda entry point: one ORM session and one transaction per request."""
    app.append_context(session=session)  # type: ignore[no-untyped-call]
    return app.resolve(event, context)


# --------------------------------------------------------------------------- helpers


def _session() -> Session:
    session: Session = app.context["session"]
    return session


def _stock(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "quantity": item.quantity,
        "updated_at": item.updated_at.astimezone(datetime.UTC).isoformat(),
    }


def _json(status: int, body: Any) -> Response[str]:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(body, separators=(",", ":")),
        headers={},
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


def _item_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise RequestError(400, "an item id is a positive integer")
    key = int(raw)
    if not 0 < key <= MAX_ID:
        raise RequestError(404, f"item {key} does not exist")
    return key


def _read_body() -> Any:
    event = app.current_event
    body = event.body
    if body is None or body == "":
        raise RequestError(400, 'the request needs a JSON object body: {"delta": <integer>}')
    try:
        data = base64.b64decode(body, validate=True) if event.is_base64_encoded else body.encode()
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise RequestError(400, "the request body is not valid base64") from exc
    if len(data) > MAX_BODY_BYTES:
        raise RequestError(
            413, f"the request body is {len(data)} bytes; the limit is {MAX_BODY_BYTES}"
        )
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise RequestError(400, "the request body is not valid JSON") from exc


def _delta(doc: Any) -> int:
    if not isinstance(doc, dict):
        raise RequestError(400, "the request body must be a JSON object")
    unknown = sorted(key for key in doc if key != "delta")
    if unknown:
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        raise RequestError(400, f"unknown field(s): {shown}; allowed: delta")
    if "delta" not in doc:
        raise RequestError(400, "delta is required")
    delta = doc["delta"]
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise RequestError(400, "delta must be an integer")
    if delta == 0 or abs(delta) > MAX_QUANTITY:
        raise RequestError(400, f"delta must be non-zero and at most {MAX_QUANTITY} either way")
    return delta
