"""Recovery: from a killed backend (or a restarted server) to the next successful invocation.

Invocations run back to back, as if requests kept coming. The clock starts once the
backend has exited (or once the restarted server accepts connections) and stops when an
invocation succeeds; the failures on the way are counted. lambda-db and the naive
pattern alternate, in one process, on one server.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import lambda_db
from lambda_db.testing import LambdaContext
from lambda_db_lab.appdb import AppDb, terminate_and_wait
from lambda_db_lab.environments import lambda_db_pattern, naive_pattern
from lambda_db_lab.ledger import invoke, new_event
from lambda_db_lab.localpg import LocalPostgres

__all__ = ["recovery"]

Handler = Callable[[dict[str, Any], Any], Any]


def _until_success(handler: Handler) -> tuple[float, int]:
    """Seconds until an invocation succeeds, and the failures before it."""
    started = time.perf_counter()
    failures = 0
    while not invoke(handler, new_event(), LambdaContext(timeout=10.0)).ok:
        failures += 1
    return time.perf_counter() - started, failures


def _warm_ms(handler: Handler, n: int = 50) -> float:
    samples = []
    for _ in range(n):
        outcome = invoke(handler, new_event(), LambdaContext())
        assert outcome.ok, outcome
        samples.append(outcome.elapsed * 1000)
    return statistics.median(samples)


def recovery(pg: LocalPostgres, app_db: AppDb, *, kills: int, restarts: int) -> dict[str, Any]:
    """Median time to the next success after a kill and after a restart, per pattern."""
    os.environ.update(app_db)
    lambda_db.reset()
    handlers = {"lambda-db": lambda_db_pattern()[0], "naive": naive_pattern()[0]}
    result: dict[str, Any] = {"kills": kills, "restarts": restarts}
    for name, handler in handlers.items():
        result[name] = {"warm_invocation_ms": _warm_ms(handler)}
    runs: dict[str, dict[str, list[tuple[float, int]]]] = {
        name: {"kill": [], "restart": []} for name in handlers
    }
    for i in range(kills):
        order = list(handlers.items()) if i % 2 == 0 else list(handlers.items())[::-1]
        for name, handler in order:
            _until_success(handler)  # connected and warm
            terminate_and_wait(app_db)
            runs[name]["kill"].append(_until_success(handler))
    for i in range(restarts):
        for handler in handlers.values():
            _until_success(handler)
        pg.restart()  # returns once the server accepts connections
        order = list(handlers.items()) if i % 2 == 0 else list(handlers.items())[::-1]
        for name, handler in order:
            runs[name]["restart"].append(_until_success(handler))
    for name in handlers:
        for fault, samples in runs[name].items():
            result[name][f"after_{fault}_ms"] = statistics.median(s[0] * 1000 for s in samples)
            result[name][f"failures_per_{fault}"] = statistics.mean(s[1] for s in samples)
    lambda_db.reset()
    return result
