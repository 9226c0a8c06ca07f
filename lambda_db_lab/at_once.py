"""The same event, delivered to several execution environments at the same moment.

What at-least-once delivery and client retries do to a function: one event, N concurrent
invocations. :func:`invoke_at_once` starts ``count`` processes (``spawn``: each imports the
handler once, as an execution environment does), waits until every one is ready, releases
them together, and collects what each invocation returned or raised.

Example::

    results = invoke_at_once("tests.exactly_once.handlers:hold_order", {"order_id": "A"},
                             env=dict(app_db), count=8)
    assert len({json.dumps(r.value) for r in results}) == 1
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Invocation", "invoke_at_once"]

_mp = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Invocation:
    """What one environment's invocation did."""

    index: int
    pid: int
    #: The handler's return value (``None`` when it raised).
    value: Any
    #: The exception's class name, or ``None`` on success.
    error: str | None = None
    message: str = ""
    #: ``time.monotonic()`` when it started and ended (one clock for every process on Linux).
    started: float = 0.0
    ended: float = 0.0
    #: The context's timeout (seconds).
    timeout: float = 0.0
    #: ``lambda_db.idempotency.stats`` in that environment afterwards.
    idempotency: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The invocation returned."""
        return self.error is None

    @property
    def seconds(self) -> float:
        """How long it took."""
        return self.ended - self.started


def invoke_at_once(
    handler: str,
    event: Any,
    *,
    env: Mapping[str, str],
    count: int,
    timeout: float | list[float] = 3.0,
    patience: float = 120.0,
) -> list[Invocation]:
    """Invoke ``handler`` (``"module:function"``) with ``event`` in ``count`` processes at once.

    ``env``: the environment variables of every process (``DB_*``); ``timeout``: the
    function timeout of each invocation's context (one for all, or one per process).
    Returns the invocations in process order.
    """
    timeouts = timeout if isinstance(timeout, list) else [timeout] * count
    if len(timeouts) != count:
        raise ValueError(f"{len(timeouts)} timeouts for {count} processes")
    results: Any = _mp.Queue()
    ready: Any = _mp.Queue()
    go = _mp.Event()
    procs = [
        _mp.Process(
            target=_environment,
            args=(handler, event, dict(env), i, timeouts[i], ready, go, results),
            name=f"at-once-{i}",
            daemon=True,
        )
        for i in range(count)
    ]
    for proc in procs:
        proc.start()
    try:
        deadline = time.monotonic() + patience
        for _ in range(count):
            kind, index, detail = _next(ready, procs, deadline, "environments to start")
            if kind == "crashed":
                raise RuntimeError(f"environment {index} could not start:\n{detail}")
        go.set()
        collected = [_next(results, procs, deadline, "invocations") for _ in range(count)]
        return sorted(collected, key=lambda r: r.index)
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _next(source: Any, procs: list[Any], deadline: float, what: str) -> Any:
    """The next message, or an error once the deadline passed or every process is gone."""
    while True:
        try:
            return source.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for the {what}") from None
            if not any(proc.is_alive() for proc in procs):
                raise RuntimeError(f"every process exited before the {what}") from None


def _environment(
    target: str, event: Any, env: dict[str, str], index: int, timeout: float,
    ready: Any, go: Any, results: Any,
) -> None:  # fmt: skip
    try:
        os.environ.update(env)
        module, _, name = target.partition(":")
        handler = getattr(importlib.import_module(module), name)
        import lambda_db
        from lambda_db.testing import LambdaContext
    except BaseException:  # noqa: BLE001 (reported to the parent, which raises it)
        ready.put(("crashed", index, traceback.format_exc()))
        return
    ready.put(("ready", index, ""))
    go.wait()
    context = LambdaContext(timeout=timeout)
    started = time.monotonic()
    value: Any = None
    error: str | None = None
    message = ""
    try:
        value = handler(event, context)
    except Exception as exc:  # noqa: BLE001 (the outcome is what we report)
        error, message = type(exc).__name__, str(exc)
    ended = time.monotonic()
    results.put(
        Invocation(
            index=index,
            pid=os.getpid(),
            value=value,
            error=error,
            message=message,
            started=started,
            ended=ended,
            timeout=timeout,
            idempotency=lambda_db.idempotency.stats.as_dict(),
        )
    )
    lambda_db.reset()
