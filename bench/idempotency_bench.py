"""What ``lambda_db.idempotent`` adds to a warm invocation, and that its cleanup stays bounded.

Three handlers on the same table, each on its own :class:`~lambda_db.Database` (one
connection each, warm), all through ``DelayRelay(one_way=0.0005)`` (+1 ms per round trip,
about a VPC hop and RDS Proxy):

* ``plain``: ``@with_connection``, one ``INSERT`` (the baseline);
* ``idempotent, new key``: the same under ``@idempotent`` with a fresh key each time (the
  common case: claim, ``INSERT``, store the result);
* ``idempotent, repeat``: a key that already completed (claim, read, no ``INSERT``).

Cases run in interleaved rounds (plain, new, repeat, plain, ...). Per invocation: wall
time (``perf_counter``) and the calling thread's CPU time (``thread_time``: the relay's
threads are not counted). Statements per invocation are counted by a protocol-aware relay
(``lambda_db_lab.commit_relay``), one invocation each. Then the cleanup: with a backlog of
expired records, every claim deletes at most ``SWEEP_LIMIT`` of them; and a claim on a
table of 100,000 live records costs what it costs on an empty one (an index, not a scan).

``run(env, rounds)`` takes the ``DB_*`` variables of a database the role owns;
``render(results)`` gives Markdown lines.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import lambda_db
from bench.timing import percentile
from lambda_db import Database, Settings, idempotent, with_connection
from lambda_db.idempotency import _decorator, ensure_schema
from lambda_db.testing import LambdaContext
from lambda_db_lab.commit_relay import CommitRelay
from lambda_db_lab.delay import DelayRelay

__all__ = ["render", "run"]

TABLE = "bench_idempotency"
ORDERS = "bench_idempotent_orders"
#: Invocations per case per round.
CALLS = 100
#: Expired records seeded for the cleanup figure, and invocations measured on them.
BACKLOG = 2_000
CLEANUP_CALLS = 100
#: Live records in the "large table" claim figure.
LARGE_TABLE = 100_000

Handler = Callable[[dict[str, Any], Any], Any]


def run(env: Mapping[str, str], rounds: int) -> dict[str, Any]:
    """Measure; ``env`` holds the ``DB_*`` variables (password mode) of a database the role
    owns (its tables are created here)."""
    settings = Settings.from_env(env)
    _setup(settings)
    results: dict[str, Any] = {"rounds": rounds, "calls_per_round": CALLS}
    with DelayRelay(settings.host, settings.port, one_way=0.0005) as relay:
        delayed = settings.replace(host=relay.host, port=relay.port, sslmode="disable")
        results["latency"] = _latency(delayed, rounds)
    results["statements"] = _statements(settings)
    results["cleanup"] = _cleanup(settings)
    results["large_table"] = _large_table(settings, rounds)
    return results


def render(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines for BENCHMARKS.md."""
    latency, statements = results["latency"], results["statements"]
    base = latency["plain"]
    lines = [
        "## Exactly once: the cost of `lambda_db.idempotent`",
        "",
        "A warm invocation that inserts one row, through a relay adding 1 ms per round trip "
        f"(`DelayRelay(one_way=0.0005)`), {results['rounds']} interleaved rounds of "
        f"{results['calls_per_round']} invocations per case. CPU: the invoking thread's "
        "`thread_time`. Statements: counted on the wire (`lambda_db_lab.commit_relay`).",
        "",
        "| case | statements | wall p50 ms | wall p99 ms | CPU p50 µs | wall vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for case, figures in latency.items():
        lines.append(
            f"| {case} | {len(statements[case])} | {figures['wall_p50_ms']:.2f} | "
            f"{figures['wall_p99_ms']:.2f} | {figures['cpu_p50_us']:.0f} | "
            f"{figures['wall_p50_ms'] / base['wall_p50_ms']:.2f}x |"
        )
    lines += ["", "On the wire (literals as `?`):", ""]
    for case, sent in statements.items():
        lines.append(f"* {case}: " + "; ".join(f"`{s}`" for s in sent))
    cleanup, large = results["cleanup"], results["large_table"]
    lines += [
        "",
        f"Cleanup: {cleanup['backlog']} expired records, then {cleanup['invocations']} "
        f"invocations with new keys. Each claim deleted at most {cleanup['max_swept']} "
        f"(`SWEEP_LIMIT` = {cleanup['sweep_limit']}); {cleanup['swept']} in all, "
        f"{cleanup['left']} left. Wall p50 {cleanup['wall_p50_ms']:.2f} ms with the backlog "
        f"against {cleanup['baseline_p50_ms']:.2f} ms without (direct, no relay).",
        "",
        f"A whole invocation on a large table: p50 {large['large_p50_ms']:.2f} ms with "
        f"{large['live_records']:,} live records against {large['empty_p50_ms']:.2f} ms on "
        f"an empty one (direct, {large['calls']} invocations each); one scan of that table "
        f"takes {large['full_scan_p50_ms']:.2f} ms. The claim and the sweep use the primary "
        "key and the `expires_at` index.",
        "",
    ]
    return lines


# -- the cases ------------------------------------------------------------------------------


def _setup(settings: Settings) -> None:
    db = Database(settings)
    try:
        with db.invocation(LambdaContext(timeout=60)) as scope:
            conn = scope.connection
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {ORDERS} (id bigint GENERATED ALWAYS AS "
                    "IDENTITY PRIMARY KEY, order_id text NOT NULL)"
                )
            ensure_schema(conn, table=TABLE)
    finally:
        db.close()


def _handler(db: Database, *, keyed: bool) -> Handler:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with db.get_connection().cursor() as cur:
            cur.execute(
                f"INSERT INTO {ORDERS} (order_id) VALUES (%s) RETURNING id", (event["order_id"],)
            )
            row = cur.fetchone()
        return {"id": row[0] if row else None}

    inner = idempotent("order_id", table=TABLE, database=db)(handler) if keyed else handler
    return with_connection(database=db)(inner)


def _cases(settings: Settings) -> tuple[dict[str, Callable[[], object]], list[Database]]:
    """The three cases as zero-argument calls, each on its own warm Database."""
    dbs = [Database(settings) for _ in range(3)]
    plain, new, repeat = (
        _handler(dbs[0], keyed=False),
        _handler(dbs[1], keyed=True),
        _handler(dbs[2], keyed=True),
    )
    repeated = {"order_id": f"repeat-{uuid.uuid4()}"}
    repeat(repeated, LambdaContext(timeout=30))  # completed once: every later call replays
    calls: dict[str, Callable[[], object]] = {
        "plain": lambda: plain({"order_id": str(uuid.uuid4())}, LambdaContext(timeout=30)),
        "idempotent, new key": lambda: new(
            {"order_id": str(uuid.uuid4())}, LambdaContext(timeout=30)
        ),
        "idempotent, repeat": lambda: repeat(repeated, LambdaContext(timeout=30)),
    }
    for call in calls.values():  # warm: connected, first statements sent
        call()
    return calls, dbs


def _latency(settings: Settings, rounds: int) -> dict[str, dict[str, float]]:
    calls, dbs = _cases(settings)
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for _ in range(rounds):
            for name, call in calls.items():
                for _ in range(CALLS):
                    w, c = time.perf_counter(), time.thread_time()
                    call()
                    cpu[name].append(time.thread_time() - c)
                    wall[name].append(time.perf_counter() - w)
    finally:
        for db in dbs:
            db.close()
    return {
        name: {
            "wall_p50_ms": 1000 * statistics.median(wall[name]),
            "wall_p99_ms": 1000 * percentile(wall[name], 0.99),
            "cpu_p50_us": 1e6 * statistics.median(cpu[name]),
            "invocations": len(wall[name]),
        }
        for name in calls
    }


def _statements(settings: Settings) -> dict[str, list[str]]:
    """What one warm invocation of each case sends, counted by a protocol-aware relay."""
    with CommitRelay(settings.host, settings.port) as relay:
        relayed = settings.replace(host=relay.host, port=relay.port, sslmode="disable")
        calls, dbs = _cases(relayed)
        sent: dict[str, list[str]] = {}
        try:
            for name, call in calls.items():
                before = len(relay.statements)
                call()
                sent[name] = [_shape(s) for s in relay.statements[before:]]
        finally:
            for db in dbs:
                db.close()
    return sent


def _cleanup(settings: Settings) -> dict[str, Any]:
    """A backlog of expired records: each claim deletes a bounded number of them."""
    db = Database(settings)
    handler = _handler(db, keyed=True)
    stats = lambda_db.idempotency.stats
    try:
        _truncate(db)
        baseline = _timed(handler, CLEANUP_CALLS)
        _truncate(db)
        with db.invocation(LambdaContext(timeout=60)) as scope, scope.connection.cursor() as cur:
            cur.execute(
                f"INSERT INTO {TABLE} (key, expires_at) SELECT 'expired-' || n,"
                " now() - n * interval '1 second' FROM generate_series(1, %s) n",
                (BACKLOG,),
            )
        swept_before = stats.swept
        per_call: list[int] = []
        wall: list[float] = []
        for _ in range(CLEANUP_CALLS):
            before = stats.swept
            wall += _timed(handler, 1)
            per_call.append(stats.swept - before)
        with db.invocation(LambdaContext(timeout=60)) as scope, scope.connection.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE} WHERE expires_at <= now()")
            row = cur.fetchone()
        return {
            "backlog": BACKLOG,
            "invocations": CLEANUP_CALLS,
            "sweep_limit": _decorator.SWEEP_LIMIT,
            "max_swept": max(per_call),
            "swept": stats.swept - swept_before,
            "left": row[0] if row else None,
            "wall_p50_ms": 1000 * statistics.median(wall),
            "baseline_p50_ms": 1000 * statistics.median(baseline),
        }
    finally:
        db.close()


def _large_table(settings: Settings, rounds: int) -> dict[str, Any]:
    """A claim's cost with 100,000 live records against an empty table."""
    db = Database(settings)
    handler = _handler(db, keyed=True)
    calls = 20 * rounds
    try:
        _truncate(db)
        empty = _timed(handler, calls)
        with db.invocation(LambdaContext(timeout=120)) as scope, scope.connection.cursor() as cur:
            cur.execute(
                f"INSERT INTO {TABLE} (key, expires_at) SELECT 'live-' || n,"
                " now() + interval '1 hour' FROM generate_series(1, %s) n",
                (LARGE_TABLE,),
            )
        with db.invocation(None, autocommit=True) as scope, scope.connection.cursor() as cur:
            cur.execute(f"ANALYZE {TABLE}")
        large = _timed(handler, calls)
        scans = []  # for scale: what reading the whole table costs
        for _ in range(rounds):
            with (
                db.invocation(None, autocommit=True) as scope,
                scope.connection.cursor() as cur,
            ):
                started = time.perf_counter()
                cur.execute(f"SELECT count(*) FROM {TABLE} WHERE result IS NULL")
                cur.fetchone()
                scans.append(time.perf_counter() - started)
        _truncate(db)
        return {
            "live_records": LARGE_TABLE,
            "calls": calls,
            "empty_p50_ms": 1000 * statistics.median(empty),
            "large_p50_ms": 1000 * statistics.median(large),
            "full_scan_p50_ms": 1000 * statistics.median(scans),
        }
    finally:
        db.close()


def _truncate(db: Database) -> None:
    with db.invocation(LambdaContext(timeout=60)) as scope, scope.connection.cursor() as cur:
        cur.execute(f"TRUNCATE {TABLE}, {ORDERS}")


def _timed(handler: Handler, calls: int) -> list[float]:
    wall = []
    for _ in range(calls):
        started = time.perf_counter()
        handler({"order_id": str(uuid.uuid4())}, LambdaContext(timeout=30))
        wall.append(time.perf_counter() - started)
    return wall


def _shape(sql: str) -> str:
    """``sql`` on one line, literals as ``?``, long statements cut."""
    text = re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b", "?", " ".join(sql.split()))
    return text if len(text) <= 60 else text[:57] + "..."
