"""Lambda execution environments as processes, each invoking its handler in a loop.

The one environment simulator of the project: the tests, the benchmarks and
``lambda-db demo`` all run their bursts with it.

An environment is a process (``multiprocessing``, spawn): it imports its handler once
(module state survives between invocations, as in Lambda), then runs one invocation at a
time, each with a fresh context whose deadline is real (``lambda_db.testing.LambdaContext``),
and reports every :class:`~lambda_db_lab.ledger.Outcome` to the parent. Every invocation
writes one row with a unique id and reads it back in the same transaction; every
``bad_every``-th event is malformed, so the handler's error path runs.

Three handler patterns, on the same settings (the ``DB_*`` environment):

* ``lambda-db``: the README's handler, ``@with_connection`` and ``get_connection()``;
* ``naive``: the seed article's "Fix 4", a module-level ``psycopg2`` connection reopened
  only when ``conn.closed`` says so, committed with ``with conn:``;
* ``connect-per-invocation``: the article's anti-pattern, a new connection every
  invocation whose ``close()`` a malformed event skips. CPython would close an
  unreferenced connection as soon as the exception is discarded, so the environment keeps
  the skipped ones open until it ends: that is what a leak is in a real environment, which
  is frozen with its sockets open and, when reaped, never says goodbye to the server.

The parent can freeze every environment between two invocations (as Lambda freezes an
idle environment), act on the server, and thaw them; with ``Plan.hold`` the environments
stay alive after their last invocation, holding what they opened, until the run ends.

Example::

    plan = Plan(env=dict(app_db), invocations=20)
    with Environments(plan, count=8) as envs:
        envs.finish()
    assert all(o.ok for o in envs.outcomes)
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lambda_db_lab.ledger import Handler, Outcome, invoke, is_bad, new_event, write_row

__all__ = [
    "Environments",
    "Pattern",
    "Plan",
    "connect_per_invocation_pattern",
    "lambda_db_pattern",
    "naive_pattern",
]

Pattern = Literal["lambda-db", "naive", "connect-per-invocation"]
_mp = multiprocessing.get_context("spawn")  # the parent may run threads: never fork it


@dataclass(frozen=True)
class Plan:
    """What every environment does."""

    #: The function's environment variables (``DB_*``).
    env: Mapping[str, str]
    pattern: Pattern = "lambda-db"
    #: Invocations per environment; ``None`` runs until :meth:`Environments.finish`.
    invocations: int | None = None
    #: The function's timeout: each invocation's context counts down from it.
    timeout_ms: int = 3000
    #: Seconds between two invocations of one environment.
    pause: float = 0.0
    #: Seconds of ``pg_sleep`` inside each invocation (holding its transaction).
    work: float = 0.0
    #: Freeze after this many invocations until :meth:`Environments.thaw`.
    freeze_after: int | None = None
    #: Every ``bad_every``-th event is malformed (the second, then every k-th); 0: none.
    bad_every: int = 0
    #: After the last invocation, stay alive (holding what the handler opened) until the
    #: run ends, as a warm environment outlives its burst.
    hold: bool = False
    #: Secret mode: a file holding the RDS secret's JSON. Each environment serves it from
    #: its own moto Secrets Manager (moto cannot be shared between processes) and reads
    #: the file again when thawed: a rotation that every environment sees at once.
    secret_file: str | None = None


class Environments:
    """Start ``count`` environments running ``plan``; collect their outcomes."""

    def __init__(
        self, plan: Plan, count: int, *, on_outcome: Callable[[Outcome], object] | None = None
    ) -> None:
        self.plan = plan
        self.count = count
        self._on_outcome = on_outcome
        self.outcomes: list[Outcome] = []
        #: Per environment, its counters at exit (``Database.stats`` or the naive ones).
        self.stats: dict[int, dict[str, int]] = {}
        #: Per environment, the CPU seconds (``time.process_time()``, every thread) its
        #: invocations took, from :meth:`start`'s release to its last invocation.
        self.cpu_s: dict[int, float] = {}
        #: When :meth:`start` released the environments (``time.monotonic()``).
        self.released = 0.0
        self._queue: Any = _mp.Queue()
        self._go = _mp.Event()
        self._stop = _mp.Event()
        self._thaw = _mp.Event()
        self._ready: set[int] = set()
        self._frozen: set[int] = set()
        self._done: set[int] = set()
        self._procs = [
            _mp.Process(
                target=_environment,
                args=(plan, i, self._queue, self._go, self._stop, self._thaw),
                name=f"lambda-env-{i}",
                daemon=True,
            )
            for i in range(count)
        ]

    def __enter__(self) -> Environments:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thaw.set()
        self._go.set()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)

    # -- control ---------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> float:
        """Start every process, wait until all have imported, then release them together.

        Returns the ``time.monotonic()`` of the release (also kept as ``released``).
        """
        for proc in self._procs:
            proc.start()
        self._wait(lambda: len(self._ready) == self.count, timeout, "environments to start")
        self.released = time.monotonic()
        self._go.set()
        return self.released

    def wait_until(
        self, predicate: Callable[[Environments], bool], timeout: float, what: str
    ) -> None:
        """Collect reports until ``predicate(self)`` holds (``TimeoutError`` after ``timeout``)."""
        self._wait(lambda: predicate(self), timeout, what)

    def wait_frozen(self, timeout: float = 60.0) -> None:
        """Wait until every environment is frozen (``Plan.freeze_after``)."""
        self._wait(lambda: len(self._frozen | self._done) == self.count, timeout, "freeze")

    def thaw(self) -> None:
        """Let frozen environments carry on."""
        self._thaw.set()

    def finish(self, timeout: float = 300.0) -> None:
        """Stop looping environments, wait for all to report their counters, and join them."""
        if self.plan.invocations is None:
            self._stop.set()
        self._thaw.set()
        self._wait(lambda: len(self._done) == self.count, timeout, "environments to finish")
        if self.plan.hold:
            return  # alive until __exit__
        for proc in self._procs:
            proc.join(timeout=30)

    # -- results ---------------------------------------------------------------------

    def successes(self, env: int, *, since: float = float("-inf")) -> int:
        """Successful invocations of ``env`` that started at or after ``since``."""
        return sum(1 for o in self.outcomes if o.env == env and o.ok and o.started >= since)

    def failures(self) -> list[Outcome]:
        """Every failed invocation."""
        return [o for o in self.outcomes if not o.ok]

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waited {timeout:g} s for {what}")
            try:
                message = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs) and not condition():
                    raise RuntimeError(f"every environment exited before {what}") from None
                continue
            self._dispatch(message)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, env, *rest = message
        if kind == "outcome":
            self.outcomes.append(rest[0])
            if self._on_outcome is not None:
                self._on_outcome(rest[0])
        elif kind == "ready":
            self._ready.add(env)
        elif kind == "frozen":
            self._frozen.add(env)
        elif kind == "done":
            self._done.add(env)
            self.stats[env], self.cpu_s[env] = rest
        elif kind == "crashed":
            raise RuntimeError(f"environment {env} crashed:\n{rest[0]}")


# -- inside an environment (a spawned process) ----------------------------------------


def _environment(plan: Plan, index: int, reports: Any, go: Any, stop: Any, thaw: Any) -> None:
    try:
        from lambda_db.testing import LambdaContext

        os.environ.update(plan.env)
        rotate = _serve_secret(plan.secret_file) if plan.secret_file else None
        handler, counters = _PATTERNS[plan.pattern]()
        reports.put(("ready", index))
        go.wait()
        cpu_start = time.process_time()
        seq = 0
        while not stop.is_set() and (plan.invocations is None or seq < plan.invocations):
            if seq == plan.freeze_after:
                reports.put(("frozen", index))
                thaw.wait()
                if rotate is not None:
                    rotate()
            context = LambdaContext(timeout=plan.timeout_ms / 1000)
            event = new_event(seq, index, plan.work, bad=is_bad(seq, plan.bad_every))
            outcome = invoke(handler, event, context)
            reports.put(("outcome", index, outcome))
            seq += 1
            if plan.pause:
                time.sleep(plan.pause)
        cpu_s = time.process_time() - cpu_start
        reports.put(("done", index, counters(), cpu_s))
        if plan.hold:
            stop.wait()
    except BaseException:  # noqa: BLE001 (reported to the parent, which raises it)
        reports.put(("crashed", index, traceback.format_exc()))


def _serve_secret(path: str) -> Callable[[], None]:
    """Start moto, store the secret from ``path``; return what re-reads it (a rotation)."""
    import boto3
    from moto import mock_aws

    mock_aws().start()
    client = boto3.client("secretsmanager", region_name=os.environ["AWS_REGION"])
    with open(path) as f:
        arn = client.create_secret(Name="app/db", SecretString=f.read())["ARN"]
    os.environ.update(DB_AUTH_MODE="secret", DB_SECRET_ARN=arn)

    def rotate() -> None:
        with open(path) as f:
            client.put_secret_value(SecretId=arn, SecretString=f.read())

    return rotate


def lambda_db_pattern() -> tuple[Handler, Callable[[], dict[str, int]]]:
    """The README's handler on the default database; and its counters."""
    import lambda_db

    @lambda_db.with_connection
    def handler(event: dict[str, Any], context: Any) -> str:
        with lambda_db.get_connection().cursor() as cur:
            write_row(cur, event)
        return "ok"

    return handler, lambda: lambda_db.default_database().stats.as_dict()


def naive_pattern() -> tuple[Handler, Callable[[], dict[str, int]]]:
    """The seed article's Fix 4: reconnect only when ``conn.closed`` says so; its counters."""

    state: dict[str, Any] = {"conn": None, "connects": 0}

    def get_connection() -> Any:
        conn = state["conn"]
        if conn is None or conn.closed:
            conn = state["conn"] = _connect_from_env()
            state["connects"] += 1
        return conn

    def handler(event: dict[str, Any], context: Any) -> str:
        conn = get_connection()
        with conn, conn.cursor() as cur:
            write_row(cur, event)
        return "ok"

    return handler, lambda: {"connects": int(state["connects"])}


def connect_per_invocation_pattern() -> tuple[Handler, Callable[[], dict[str, int]]]:
    """The article's anti-pattern: a connection per invocation; a malformed event skips
    ``close()`` and the connection stays open while the environment lives. Its counters."""
    leaked: list[Any] = []  # see the module docstring
    state = {"connects": 0}

    def handler(event: dict[str, Any], context: Any) -> str:
        conn = _connect_from_env()  # a fresh connection every invocation
        state["connects"] += 1
        leaked.append(conn)  # (kept open, as a frozen environment keeps it)
        with conn.cursor() as cur:
            write_row(cur, event)  # a malformed event raises here: close() never runs
        conn.commit()
        conn.close()
        leaked.remove(conn)
        return "ok"

    return handler, lambda: {"connects": state["connects"], "leaked": len(leaked)}


def _connect_from_env() -> Any:
    """A plain psycopg2 connection from the ``DB_*`` variables (what naive code does)."""
    import psycopg2

    return psycopg2.connect(
        host=os.environ["DB_HOST"],
        port=os.environ["DB_PORT"],
        dbname=os.environ["DB_NAME"],
        user=os.environ["DB_USER"],
        password=os.environ["DB_PASSWORD"],
        sslmode=os.environ.get("DB_SSLMODE") or "prefer",
        connect_timeout=5,
        application_name=os.environ.get("DB_APPLICATION_NAME", "naive"),
    )


_PATTERNS: dict[str, Callable[[], tuple[Handler, Callable[[], dict[str, int]]]]] = {
    "lambda-db": lambda_db_pattern,
    "naive": naive_pattern,
    "connect-per-invocation": connect_per_invocation_pattern,
}
