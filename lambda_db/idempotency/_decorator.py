"""``idempotent``: the handler's result stored in the invocation's own transaction.

Placed directly under ``@with_connection``, it runs inside the transaction that commits the
handler's writes::

    BEGIN
    WITH swept AS (DELETE ... expired rows, a few), claimed AS (INSERT ... ON CONFLICT ...)
    SELECT ...                                   -- claim the key, or read its record
    ...the handler's statements...
    UPDATE lambda_db_idempotency SET result = '...' WHERE key = '...'
    COMMIT                                       -- the record and the writes, or neither

so a retry after any failure sees either both (and gets the stored result back) or
neither (and runs the handler again). A concurrent duplicate's ``INSERT`` waits on the
primary key until the first transaction ends: the database does the waiting, with no lock
of lambda-db's own and nothing that pins RDS Proxy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from lambda_db._driver import INERROR
from lambda_db.errors import ConfigurationError, IdempotencyMismatchError, LambdaDbError
from lambda_db.idempotency._store import DEFAULT_TABLE, Record, Store

if TYPE_CHECKING:
    from lambda_db._invocation import Invocation
    from lambda_db.database import Database

__all__ = ["SWEEP_LIMIT", "IdempotencyStats", "Selector", "idempotent", "stats"]

logger = logging.getLogger(__name__)

#: Expired rows (of other keys) each claim deletes at most: cleaning keeps pace with
#: writing as long as this exceeds one, and no claim ever does more.
SWEEP_LIMIT = 10
#: How many times a claim is repeated when the record it waited for is not visible yet.
CLAIM_ATTEMPTS = 3
#: Prefix of the keys ``idempotent`` stores (the Powertools adapter's have none).
KEY_PREFIX = "lambda-db:"

Handler = TypeVar("Handler", bound=Callable[..., Any])
#: A JMESPath expression over the event, or a callable ``(event) -> value``.
Selector = str | Callable[[Any], Any]


@dataclass
class IdempotencyStats:
    """Per-process counters of :func:`idempotent` (an environment is one process)."""

    #: Keys claimed (the handler ran).
    claims: int = 0
    #: Stored results returned without running the handler.
    replays: int = 0
    #: Invocations that had no key and ran normally.
    unkeyed: int = 0
    #: Same key, other payload: :class:`~lambda_db.IdempotencyMismatchError`.
    mismatches: int = 0
    #: Expired records deleted by claims, and the most any one claim deleted.
    swept: int = 0
    max_swept: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reset(self) -> None:
        """Zero every counter (tests, benchmarks)."""
        for f in fields(self):
            setattr(self, f.name, 0)


#: The process's counters.
stats = IdempotencyStats()
_stats_lock = threading.Lock()


def idempotent(
    key: Selector,
    *,
    expires_after: float = 3600.0,
    payload: Selector | None = None,
    table: str = DEFAULT_TABLE,
    database: Database | None = None,
) -> Callable[[Handler], Handler]:
    """Run the handler at most once per key: a repeat gets the first run's stored result.

    Place it **directly under** ``@with_connection``: the key is claimed, and the result
    stored, in the invocation's transaction, so they commit with the handler's writes or
    not at all.

    * ``key``: a JMESPath expression over the event (``"order_id"``,
      ``"powertools_json(body).order_id"``, Powertools' functions included) or a callable
      ``(event) -> value``. A missing value (``None``, ``""``, or a multi-select of
      ``None`` only) means "no key": the handler runs normally;
    * ``expires_after``: seconds a record counts (by the database's clock); after that the
      key is free again, and later claims delete the expired record;
    * ``payload``: the part of the event that must be the same on a repeat (JMESPath or
      callable; default the whole event). Its SHA-256 is stored; a repeat whose payload
      differs raises :class:`~lambda_db.IdempotencyMismatchError`. Name the stable part
      when the event carries per-delivery fields: API Gateway's ``requestContext`` and
      trace headers, an SQS record's ``receiptHandle`` and ``attributes``;
    * ``table``: the table :func:`lambda_db.idempotency.ensure_schema` created;
    * ``database``: the :class:`~lambda_db.Database` of the enclosing ``with_connection``
      (default: the default one).

    What happens:

    * a new key runs the handler; its JSON-serialisable result is stored with the claim
      (any size: written in statements below RDS Proxy's 16 KB pinning threshold);
    * a repeat of a committed key returns the stored result (decoded from JSON) without
      running the handler;
    * a concurrent duplicate waits (on the key's unique index) for the first invocation's
      transaction, at most until its own deadline
      (:class:`~lambda_db.DeadlineExceededError` then, or the server's ``lock_timeout``
      if the role has one); it then returns the stored result, or runs the handler if the
      first one rolled back. Under ``REPEATABLE READ`` or ``SERIALIZABLE`` the duplicate
      waits, then gets a serialization failure (``40001``) when the first commits:
      ``retry_serialization_failures=1`` turns that into the stored result;
    * a handler that raises leaves no record (its transaction rolls back): a retry runs;
    * under READ COMMITTED (the default) each claim also deletes at most
      :data:`SWEEP_LIMIT` expired records of other keys, oldest first, through the
      ``expires_at`` index: never a scan of the table. Under REPEATABLE READ or
      SERIALIZABLE it deletes none (a range read there makes concurrent invocations
      conflict): call :func:`lambda_db.idempotency.delete_expired` from a scheduled job.

    **Order matters.** Above ``@with_connection`` (or with no ``with_connection`` at all)
    there is no transaction to join: storing the record in one of its own would let it
    disagree with the handler's writes, so every invocation fails at once with
    :class:`~lambda_db.ConfigurationError` before the handler runs. The same holds with
    ``autocommit=True`` or ``readonly=True``, which have no transaction to write in.
    Decorators between the two are fine. It also works on a function called inside the
    invocation, for example a record handler of :func:`lambda_db.process_batch`, whose
    first argument is the event (there it is rolled back with the record's savepoint).

    Example::

        @with_connection
        @idempotent("powertools_json(body).order_id", payload="body")
        def handler(event, context):
            order = json.loads(event["body"])
            with get_connection().cursor() as cur:
                cur.execute("INSERT INTO orders (id, total) VALUES (%s, %s) RETURNING id",
                            (order["order_id"], order["total"]))
            return {"statusCode": 201, "body": json.dumps({"id": order["order_id"]})}
    """
    key_of = _selector(key, "key")
    payload_of = _selector(payload, "payload") if payload is not None else None
    if (
        isinstance(expires_after, bool)
        or not isinstance(expires_after, int | float)
        or not 0 < expires_after < float("inf")
    ):
        raise ConfigurationError(
            f"expires_after is a number of seconds above 0, got {expires_after!r}",
            variable="expires_after",
        )
    store = Store(table)
    ttl = float(expires_after)

    def decorate(func: Handler) -> Handler:
        namespace = f"{KEY_PREFIX}{func.__module__}.{func.__qualname__}"

        @functools.wraps(func)
        def wrapper(event: Any, *args: Any, **kwargs: Any) -> Any:
            value = key_of(event)
            if _missing(value):
                _count("unkeyed")
                return func(event, *args, **kwargs)
            db = database if database is not None else _default_database()
            scope = _transaction(db, func)
            record_key = f"{namespace}#{_digest(value)}"
            payload_hash = _digest(event if payload_of is None else payload_of(event))
            conn = scope.connection
            stored = _claim(store, conn, record_key, payload_hash, ttl, _sweep_limit(scope))
            if stored is not None:
                return _replay(db, stored, record_key, payload_hash)
            _count("claims")
            result = func(event, *args, **kwargs)
            text = _serialise(result, func)
            if db.driver.status(conn) == INERROR:
                # The handler swallowed a database error: nothing can commit, the scope
                # rolls back (the claim too) and says so.
                return result
            with conn.cursor() as cur:
                if not store.store(cur, record_key, text):
                    raise LambdaDbError(
                        f"idempotency key {record_key}: the handler ended the invocation's "
                        "transaction itself (conn.commit(), conn.rollback(), or with_session's "
                        "session.rollback()), "
                        "which separated its writes from their record; under @idempotent the "
                        "invocation commits, once, when the handler returns"
                    )
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _claim(
    store: Store, conn: Any, key: str, payload_hash: str, ttl: float, sweep: int | None
) -> Record | None:
    """Claim ``key`` (``None``) or return its committed record."""
    with conn.cursor() as cur:
        for _ in range(CLAIM_ATTEMPTS):
            claim = store.claim(cur, key, payload_hash, ttl, sweep)
            if claim.swept:
                with _stats_lock:
                    stats.swept += claim.swept
                    stats.max_swept = max(stats.max_swept, claim.swept)
            if claim.claimed:
                return None
            record = claim.record or store.fetch(cur, key)
            if record is not None:
                return record
            # The record it met expired (or was deleted) since: claim again.
    raise LambdaDbError(
        f"could not claim idempotency key {key} nor read its record in {CLAIM_ATTEMPTS} "
        "attempts (it kept changing under this invocation); nothing was run"
    )


def _sweep_limit(scope: Invocation) -> int | None:
    """:data:`SWEEP_LIMIT` under READ COMMITTED; ``None`` (no sweep, no read in the claim)
    under REPEATABLE READ and SERIALIZABLE, where a read would make concurrent invocations
    conflict (SSI's predicate locks) or meet rows a concurrent sweep deleted (40001).

    A role or database default isolation level is not visible here: ``None`` counts as
    READ COMMITTED, PostgreSQL's default.
    """
    level = (scope.isolation_level or "DEFAULT").upper().replace("_", " ")
    return SWEEP_LIMIT if level in ("DEFAULT", "READ COMMITTED", "READ UNCOMMITTED") else None


def _replay(db: Database, record: Record, key: str, payload_hash: str) -> Any:
    if record.payload_hash != payload_hash:
        _count("mismatches")
        raise IdempotencyMismatchError(
            f"idempotency key {key} was first used with a different payload; nothing was run "
            "and nothing was written. A client reused a key for another request, or the "
            "payload includes fields that change between deliveries: name the stable part "
            "with idempotent(..., payload=...)",
            key=key,
        )
    if record.result is None:
        raise LambdaDbError(
            f"idempotency key {key} is claimed without a result: an idempotent function "
            "called itself (or another with the same key) in this transaction, or an earlier "
            "invocation ended its transaction itself (conn.commit()) and "
            "committed the claim without its result; the key stays claimed until it expires"
        )
    _count("replays")
    db.emit("IdempotentReplays")
    logger.info("idempotency key %s already completed: returning its stored result", key)
    return json.loads(record.result)


def _transaction(db: Database, func: Callable[..., Any]) -> Invocation:
    """The invocation scope whose transaction the record joins, or a loud refusal."""
    scope = db.current
    name = getattr(func, "__qualname__", repr(func))
    if scope is None:
        raise ConfigurationError(
            f"@idempotent on {name} runs outside an invocation: place it directly under "
            "@with_connection (with_connection above, idempotent below), with the same "
            "database=. Above with_connection there is no transaction to store the record "
            "in atomically with the handler's writes, so lambda-db refuses to run rather "
            "than risk a record and writes that disagree",
            variable="idempotent",
        )
    if scope.autocommit or scope.readonly:
        option = "autocommit=True" if scope.autocommit else "readonly=True"
        raise ConfigurationError(
            f"@idempotent on {name} needs a read-write transaction to store its record in, "
            f"and the invocation runs with_connection({option})",
            variable="idempotent",
        )
    return scope


def _default_database() -> Database:
    from lambda_db.handler import default_database

    return default_database()


def _selector(selector: Selector | None, name: str) -> Callable[[Any], Any]:
    """A callable from a JMESPath expression (compiled now: a bad one fails at import)."""
    if callable(selector):
        return selector
    if not isinstance(selector, str) or not selector.strip():
        raise ConfigurationError(
            f"{name} is a JMESPath expression or a callable (event) -> value, got {selector!r}",
            variable=name,
        )
    # Imported by the handler modules that use idempotent, at their init (not by lambda_db).
    import jmespath  # type: ignore[import-untyped]
    from jmespath.exceptions import JMESPathError  # type: ignore[import-untyped]

    try:
        expression = jmespath.compile(selector)
    except JMESPathError as exc:
        raise ConfigurationError(
            f"{name} {selector!r} is not a valid JMESPath expression: {exc}", variable=name
        ) from exc
    options = None
    if "powertools_" in selector:
        from aws_lambda_powertools.utilities.jmespath_utils import PowertoolsFunctions

        options = jmespath.Options(custom_functions=PowertoolsFunctions())

    def search(event: Any) -> Any:
        return expression.search(event, options=options)

    return search


def _missing(value: Any) -> bool:
    """No key: ``None``, an empty string or container, or a multi-select of ``None`` only.

    >>> [_missing(v) for v in (None, "", [None, None], {"a": None}, 0, "k", [None, 1])]
    [True, True, True, True, False, False, False]
    """
    if isinstance(value, dict):
        return all(v is None for v in value.values())
    if isinstance(value, list | tuple):
        return all(v is None for v in value)
    if isinstance(value, bool | int | float):
        return False
    return not value


def _digest(value: Any) -> str:
    """SHA-256 of ``value``'s canonical JSON (sorted keys; other types by ``str``).

    >>> _digest({"b": 1, "a": 2}) == _digest({"a": 2, "b": 1})
    True
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


#: The largest result ``idempotent`` stores (its JSON, bytes): DynamoDB's item limit, which
#: Powertools' idempotency users know. It keeps the pieces it is written in few (each
#: statement stays under RDS Proxy's 16 KB pinning threshold).
MAX_RESULT_BYTES = 400 * 1024


def _serialise(result: Any, func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", repr(func))
    try:
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the result of idempotent {name} must be JSON-serialisable (it is stored and "
            f"returned to repeats): {exc}; the invocation's writes are rolled back"
        ) from exc
    if len(text) > MAX_RESULT_BYTES:  # json.dumps escapes to ASCII: characters are bytes
        raise LambdaDbError(
            f"the result of idempotent {name} is {len(text):,} bytes of JSON; idempotent "
            f"stores at most {MAX_RESULT_BYTES:,} (return a reference to the data, not the "
            "data); the invocation's writes are rolled back"
        )
    return text


def _count(counter: str) -> None:
    with _stats_lock:
        setattr(stats, counter, getattr(stats, counter) + 1)
