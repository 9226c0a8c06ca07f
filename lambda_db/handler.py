"""The module-level default database and the ``with_connection`` handler decorator.

Example::

    from lambda_db import get_connection, with_connection

    @with_connection
    def handler(event, context):
        with get_connection().cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            return {"items": cur.fetchone()[0]}

The decorator works bare or with options, and stacks with Powertools' decorators
in any order, because it passes ``(event, context, *args, **kwargs)`` through untouched.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from lambda_db._classify import conflict
from lambda_db._ending import leave
from lambda_db._invocation import Invocation
from lambda_db._options import Options, options_of
from lambda_db.database import Connection, Database
from lambda_db.errors import ConfigurationError

__all__ = ["check_joinable", "default_database", "get_connection", "reset", "with_connection"]

logger = logging.getLogger(__name__)

#: No retry of a conflicted handler starts with less than this left before the connect
#: deadline (seconds): the retry needs time to run, not only to start.
MIN_RETRY_TIME = 0.05

_default: Database | None = None
_default_lock = threading.Lock()

Handler = TypeVar("Handler", bound=Callable[..., Any])
R = TypeVar("R")


def default_database() -> Database:
    """The module-level :class:`Database`, configured from the environment at first use."""
    global _default
    db = _default
    if db is None:
        with _default_lock:
            if _default is None:
                _default = Database()
            db = _default
    return db


def get_connection() -> Connection:
    """The execution environment's healthy connection (opened or replaced as needed).

    Inside a ``@with_connection`` handler it is the invocation's connection, in the
    invocation's transaction, checked out at the first call.

    Example::

        conn = lambda_db.get_connection()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    """
    return (_default or default_database()).get_connection()


def reset() -> None:
    """Close and forget the default database (tests; environment changes)."""
    global _default
    with _default_lock:
        db, _default = _default, None
    if db is not None:
        db.close()


def _normal(options: Options | None) -> Options | None:
    """Options with the isolation level's case made irrelevant."""
    if options is None:
        return None
    autocommit, level, readonly, deferrable = options
    return autocommit, None if level is None else level.upper(), readonly, deferrable


def check_joinable(
    scope: Invocation,
    options: Options | None,
    retries: int = 0,
) -> None:
    """Refuse to join ``scope`` with transaction options (or conflict retries) of one's own:
    the scope being joined owns the transaction.

    ``options=None`` (the defaults) asks for *a* transaction, so it joins any scope that
    has one, whatever its characteristics, but not an ``autocommit=True`` scope: there the
    joining handler's statements would each commit on their own, and a failure half-way
    would leave the first half committed.
    """
    if options is None:
        if scope.autocommit:
            raise ConfigurationError(
                "this handler runs in a transaction, but the invocation already in progress "
                "on this Database has autocommit=True, where each statement commits on its "
                "own: drop autocommit=True from the outer decorator, or give this one "
                "autocommit=True if it does not need a transaction",
                variable="autocommit",
            )
    elif _normal(options) != _normal(scope.options):
        mine, theirs = _normal(options), _normal(scope.options or (False, None, None, None))
        names = ("autocommit", "isolation_level", "readonly", "deferrable")
        assert mine is not None and theirs is not None
        differing = [n for n, a, b in zip(names, mine, theirs, strict=True) if a != b]
        raise ConfigurationError(
            f"transaction options {options!r} differ from those of the invocation already in "
            f"progress on this Database ({scope.options!r}): set them on the outer decorator",
            variable=differing[0] if differing else "isolation_level",
        )
    if retries:
        raise ConfigurationError(
            "retry_serialization_failures re-runs a whole invocation, but this one joins an "
            "invocation already in progress: set it on the outer decorator",
            variable="retry_serialization_failures",
        )


@overload
def with_connection(handler: Handler, /) -> Handler: ...


@overload
def with_connection(
    *,
    database: Database | None = None,
    inject: None = None,
    autocommit: bool = False,
    isolation_level: str | None = None,
    readonly: bool | None = None,
    deferrable: bool | None = None,
    retry_serialization_failures: int = 0,
) -> Callable[[Handler], Handler]: ...


@overload
def with_connection(
    *,
    database: Database | None = None,
    inject: str,
    autocommit: bool = False,
    isolation_level: str | None = None,
    readonly: bool | None = None,
    deferrable: bool | None = None,
    retry_serialization_failures: int = 0,
) -> Callable[[Callable[..., R]], Callable[..., R]]: ...


def with_connection(
    handler: Handler | None = None,
    /,
    *,
    database: Database | None = None,
    inject: str | None = None,
    autocommit: bool = False,
    isolation_level: str | None = None,
    readonly: bool | None = None,
    deferrable: bool | None = None,
    retry_serialization_failures: int = 0,
) -> Any:
    """Scope each invocation: connect at first use, commit on return, roll back on raise.

    * ``database``: use this :class:`Database` instead of the default one (then call
      ``database.get_connection()``, or use ``inject``, inside the handler);
    * ``inject``: pass the connection to the handler as this keyword argument. The handler
      asked for it, so it is checked out when the invocation starts; with
      ``get_connection()`` it is checked out at the first call, and an invocation that
      never calls it never touches the database;
    * ``autocommit=True``: no transaction (no ``BEGIN``, no ``COMMIT``), for
      single-statement reads;
    * ``isolation_level`` (``"SERIALIZABLE"``, ``"REPEATABLE READ"``, ...), ``readonly``,
      ``deferrable``: for each invocation's transaction (sent with ``BEGIN``; no session
      ``SET``, so no RDS Proxy pinning);
    * ``retry_serialization_failures=N``: when the handler fails with a serialization
      failure (SQLSTATE ``40001``) or a deadlock (``40P01``), in a statement or at
      ``COMMIT``, its transaction is rolled back and the *whole handler* runs again, up to
      ``N`` more times, after a jittered backoff, while the connect deadline leaves time.
      Single statements are never replayed. Side effects outside the database (an HTTP
      call, a message sent) repeat with the handler unless it is idempotent, and so would a
      transaction the handler committed itself (``conn.commit()``) before the conflict:
      leave committing to the scope. Refused with ``autocommit=True``. The error must
      propagate out of the handler (as itself or as the cause of what it raises).

    Every database wait ends before the function's timeout (``context``'s time left minus
    ``DB_DEADLINE_MARGIN``): connect retries stop at the margin, and a statement still
    waiting at half the margin is cut (:class:`~lambda_db.DeadlineExceededError`).

    Example::

        @logger.inject_lambda_context
        @with_connection(inject="conn")
        def handler(event, context, conn):
            ...
    """
    options = options_of(autocommit, isolation_level, readonly, deferrable)  # checked now
    if autocommit and retry_serialization_failures:
        raise ConfigurationError(
            "retry_serialization_failures re-runs the whole handler, but with autocommit=True "
            "its earlier statements have already committed and would run twice",
            variable="retry_serialization_failures",
        )
    if isinstance(retry_serialization_failures, bool) or not (
        isinstance(retry_serialization_failures, int) and retry_serialization_failures >= 0
    ):
        raise ConfigurationError(
            "retry_serialization_failures is how many times to re-run the handler: an "
            f"integer >= 0, got {retry_serialization_failures!r}",
            variable="retry_serialization_failures",
        )

    def decorate(func: Handler) -> Handler:
        if inject is None and not retry_serialization_failures:
            # The common case, written for the warm path: nothing to inject, nothing to retry.
            @functools.wraps(func)
            def plain(event: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
                db = database or _default or default_database()
                joined = db._scope
                if joined is not None:  # see wrapper's
                    check_joinable(joined, options)
                    return func(event, context, *args, **kwargs)
                # ``with Invocation(...):`` spelled out: CPython 3.11 looks both special
                # methods up, binds them and calls __enter__ through C each time (timeit,
                # on an empty protocol: ~365 ns with ``with``, ~180 ns like this).
                scope = Invocation(db, context, options)
                try:
                    scope.__enter__()
                    if args or kwargs:
                        result = func(event, context, *args, **kwargs)
                    else:  # (Lambda's call: a plain one is cheaper than unpacking nothing)
                        result = func(event, context)
                except BaseException as exc:
                    if db._scope is scope:  # (a scope refused at its start has nothing to end)
                        leave(scope, type(exc), exc, exc.__traceback__)
                    raise
                leave(scope, None, None, None)
                return result

            return plain  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(event: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
            db = database or _default or default_database()
            joined = db._scope
            if joined is not None:
                # Inside another scope on this Database (lambda_db.sqlalchemy.with_session
                # outside it, say): join it. One transaction, whose end, deadline and retries
                # are the outer decorator's.
                check_joinable(joined, options, retry_serialization_failures)
                if inject is not None:
                    kwargs[inject] = joined.connection
                return func(event, context, *args, **kwargs)
            retries = 0
            while True:
                scope = Invocation(db, context, options)
                try:
                    with scope:
                        if inject is not None:
                            kwargs[inject] = scope.connection
                        return func(event, context, *args, **kwargs)
                except Exception as exc:
                    if retries >= retry_serialization_failures or not conflict(exc, db.driver):
                        raise
                    wait = db._backoff.delay(retries)
                    left = scope.deadline.left()
                    if left - wait < MIN_RETRY_TIME:
                        raise
                    retries += 1
                    db.stats.conflict_retries += 1
                    db.emit("ConflictRetries")
                    logger.info(
                        "the handler's transaction conflicted (%s); running it again in "
                        "%.3f s (retry %d of %d, %.2f s left)",
                        type(exc).__name__, wait, retries, retry_serialization_failures, left,
                    )  # fmt: skip
                    db._sleep(wait)

        return wrapper  # type: ignore[return-value]

    if handler is not None:
        return decorate(handler)
    return decorate
