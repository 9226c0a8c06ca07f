"""One simulated Lambda execution environment: a process serving invocations one at a time.

``lambda-db demo`` starts N of these (``multiprocessing``, spawn) per run. Each imports
its handler (its "cold start"), waits for the burst to begin, serves M invocations in a
row with a Lambda-like context, reports each outcome and latency on a queue, then stays
alive, holding whatever connections it left open, until the demo ends the run, as a
warm environment stays alive between bursts.

The two handlers are the point, written the way users write them:

* :func:`naive_handler`, the seed article's anti-pattern: a new connection every
  invocation, and ``close()`` skipped when the event is bad and the handler raises.
  CPython would close an unreferenced connection as soon as the exception is
  discarded, so the environment keeps the skipped ones in ``_UNCLOSED``, open until
  it ends: that is what a leak is in a real environment, which is frozen with its
  sockets open and, when reaped, never says goodbye to the server.
* :func:`lambda_db_handler`: the same code with ``@with_connection`` and
  ``get_connection()``; one connection per environment, rolled back on error, reused.

Only psycopg2 and lambda_db are imported here: the child processes start fast.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from lambda_db import get_connection, with_connection
from lambda_db.testing import LambdaContext

__all__ = [
    "EnvironmentSpec",
    "failure_label",
    "lambda_db_handler",
    "make_event",
    "naive_handler",
    "run_environment",
]

INSERT = "INSERT INTO orders (order_id, quantity) VALUES (%(order_id)s, %(quantity)s)"
#: Simulated query work, so that invocations of different environments overlap.
WORK = "SELECT pg_sleep(%(work)s)"

_PARAMS: dict[str, Any] = {}  # the naive handler's connect() arguments, set at cold start
_UNCLOSED: list[psycopg2.extensions.connection] = []  # see the module docstring


class BadEvent(ValueError):
    """The event cannot be processed: the handler's error path."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """What one environment process needs (picklable: it crosses the spawn boundary)."""

    kind: str  # "naive" or "lambda-db"
    index: int
    invocations: int
    bad_every: int
    work: float
    connect_kwargs: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0


def make_event(environment: int, invocation: int, bad_every: int) -> dict[str, Any]:
    """An order; every ``bad_every``-th one (the second, then every ``bad_every``) is bad.

    >>> [make_event(0, i, 4)["quantity"] > 0 for i in range(6)]
    [True, False, True, True, True, False]
    """
    bad = bad_every > 0 and invocation % bad_every == 1
    return {"order_id": f"{environment}-{invocation}", "quantity": 0 if bad else 1 + invocation % 5}


def _parse(event: dict[str, Any]) -> dict[str, Any]:
    if int(event.get("quantity", 0)) <= 0:
        raise BadEvent(f"order {event.get('order_id')}: quantity must be positive")
    return {
        "order_id": event["order_id"],
        "quantity": int(event["quantity"]),
        "work": event.get("work", 0.0),
    }


# -- the handlers ---------------------------------------------------------------------


def naive_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The anti-pattern: connect per invocation; a bad event skips ``close()``."""
    conn = psycopg2.connect(**_PARAMS)  # a fresh connection every invocation
    _UNCLOSED.append(conn)  # (kept open, as a frozen environment keeps it)
    order = _parse(event)  # a bad event raises here, so close() below never runs
    with conn.cursor() as cur:
        cur.execute(WORK, order)
        cur.execute(INSERT, order)
    conn.commit()
    conn.close()
    _UNCLOSED.remove(conn)
    return {"statusCode": 201, "order_id": order["order_id"]}


@with_connection
def lambda_db_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The same handler with lambda-db: one connection per environment, reused."""
    conn = get_connection()  # the environment's connection, in this invocation's transaction
    order = _parse(event)  # a bad event raises: with_connection rolls back, keeps the connection
    with conn.cursor() as cur:
        cur.execute(WORK, order)
        cur.execute(INSERT, order)
    return {"statusCode": 201, "order_id": order["order_id"]}


def _handler(spec: EnvironmentSpec) -> Callable[[dict[str, Any], Any], Any]:
    """The cold start: configuration from the environment (lambda-db reads it at first use)."""
    if spec.kind == "naive":
        _PARAMS.update(spec.connect_kwargs)
        return naive_handler
    os.environ.update(spec.environ)
    return lambda_db_handler


def failure_label(exc: BaseException) -> str:
    """A short, stable name for a failure: the exception type and the server's words.

    >>> failure_label(psycopg2.OperationalError(
    ...     'connection to server at "127.0.0.1", port 5432 failed: '
    ...     'FATAL:  too many connections for role "app"\\n'))
    'OperationalError: FATAL: too many connections for role "app"'
    """
    text = " ".join(str(exc).split())
    if "FATAL:" in text:
        text = text[text.index("FATAL:") :]
    return f"{type(exc).__name__}: {text[:160]}"


def run_environment(spec: EnvironmentSpec, go: Any, stop: Any, queue: Any) -> None:
    """Process entry point: cold start, wait for ``go``, serve, report, wait for ``stop``."""
    handler = _handler(spec)
    queue.put(("ready", spec.index))
    go.wait(60)
    for i in range(spec.invocations):
        event = make_event(spec.index, i, spec.bad_every)
        event["work"] = spec.work
        context = LambdaContext(
            spec.timeout, function_name="demo", aws_request_id=f"{spec.index}-{i}"
        )
        started = time.perf_counter()
        try:
            handler(event, context)
            outcome = "ok"
        except BadEvent:
            outcome = "bad event"
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by its name
            outcome = failure_label(exc)
        queue.put(("invocation", spec.index, outcome, time.perf_counter() - started))
    queue.put(("done", spec.index))
    stop.wait(120)
