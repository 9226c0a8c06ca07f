"""A warm invocation, end to end: lambda-db beside the naive pattern and the pooling peers.

Each pattern is a Lambda-shaped handler ``handler(event, context)`` that writes one row,
written the way its users write it:

* ``naive``: the seed article's module-level psycopg2 connection, ``with conn:`` commits;
* ``lambda-db``: ``@with_connection`` and ``get_connection()``;
* ``SQLAlchemy pre_ping``: ``QueuePool(pool_size=1, pool_pre_ping=True)``, ``engine.begin()``;
* ``psycopg_pool``: ``ConnectionPool(max_size=1, check=check_connection)``,
  ``pool.connection()``.

Three measures, each in one run with the cases interleaved:

* **statements** each pattern sends per warm invocation, read from the server's own
  statement log (a private server with ``log_statement = all``); and what an invocation
  that never touches the database sends and opens;
* **latency** per invocation directly and through :class:`~lambda_db_lab.delay.DelayRelay`
  (+1 ms per round trip, what a VPC hop and RDS Proxy cost), so every extra round trip
  shows;
* **CPU** per invocation (``time.process_time``: every thread of this process, the
  watchdog's included), and its ratio to the naive pattern's; and, because CPU time on a
  shared machine moves with the neighbours' load, the **instructions** per invocation
  counted by ``valgrind --tool=callgrind`` (the same count whatever else runs), when
  valgrind is installed.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg2

import lambda_db
from lambda_db.testing import LambdaContext
from lambda_db_lab.delay import DelayRelay
from lambda_db_lab.localpg import LocalPostgres

__all__ = ["NAIVE", "OURS", "PATTERNS", "run"]

Handler = Callable[[Any, Any], object]

NAIVE = "naive (module-level psycopg2)"
OURS = "lambda-db"
OURS_AUTOCOMMIT = "lambda-db autocommit=True"
SQLALCHEMY = "SQLAlchemy QueuePool(pool_pre_ping=True)"
PSYCOPG_POOL = "psycopg_pool check_connection"
PATTERNS = (NAIVE, OURS, OURS_AUTOCOMMIT, SQLALCHEMY, PSYCOPG_POOL)

INSERT = "INSERT INTO bench_items (v) VALUES (%s)"
#: One relayed round trip more than direct: 2 x one_way.
ONE_WAY = 0.0005


def _table(pg: LocalPostgres, role: str, dbname: str) -> None:
    pg.execute(
        "CREATE TABLE IF NOT EXISTS bench_items (id bigserial PRIMARY KEY, v int)", dbname=dbname
    )
    pg.execute(f'GRANT ALL ON bench_items, bench_items_id_seq TO "{role}"', dbname=dbname)


@contextmanager
def _handlers(
    kwargs: Mapping[str, Any], app: str, only: str | None = None
) -> Iterator[dict[str, Handler]]:
    """The five handlers on ``kwargs`` (psycopg2 connect arguments), each with an
    ``application_name`` of ``app`` plus its pattern, warm; closed afterwards. ``only``:
    build that pattern alone (no other pool's threads run beside it: callgrind counts
    every thread)."""

    def named(pattern: str) -> dict[str, Any]:
        return {**kwargs, "application_name": f"{app}-{pattern}"}

    wanted = set(PATTERNS) if only is None else {only}
    handlers: dict[str, Handler] = {}
    with ExitStack() as stack:
        if NAIVE in wanted:
            naive_conn = psycopg2.connect(**named("naive"))
            stack.callback(naive_conn.close)

            def naive(event: Any, context: Any) -> None:
                with naive_conn, naive_conn.cursor() as cur:
                    cur.execute(INSERT, (1,))

            handlers[NAIVE] = naive

        if wanted & {OURS, OURS_AUTOCOMMIT}:
            settings = lambda_db.Settings(
                host=kwargs["host"], port=int(kwargs["port"]), dbname=kwargs["dbname"],
                user=kwargs["user"], password=kwargs["password"], sslmode="disable",
                application_name=f"{app}-lambda-db",
            )  # fmt: skip
            db = lambda_db.Database(settings)
            stack.callback(db.close)

            @lambda_db.with_connection(database=db)
            def ours(event: Any, context: Any) -> None:
                with db.get_connection().cursor() as cur:
                    cur.execute(INSERT, (1,))

            @lambda_db.with_connection(database=db, autocommit=True)
            def ours_autocommit(event: Any, context: Any) -> None:
                with db.get_connection().cursor() as cur:
                    cur.execute(INSERT, (1,))

            handlers[OURS], handlers[OURS_AUTOCOMMIT] = ours, ours_autocommit

        if SQLALCHEMY in wanted:
            import sqlalchemy

            engine = sqlalchemy.create_engine(
                "postgresql+psycopg2://",
                creator=lambda: psycopg2.connect(**named("sqlalchemy")),
                pool_size=1,
                max_overflow=0,
                pool_pre_ping=True,
            )
            stack.callback(engine.dispose)
            statement = sqlalchemy.text("INSERT INTO bench_items (v) VALUES (:v)")

            def with_sqlalchemy(event: Any, context: Any) -> None:
                with engine.begin() as conn:
                    conn.execute(statement, {"v": 1})

            handlers[SQLALCHEMY] = with_sqlalchemy

        if PSYCOPG_POOL in wanted:
            from psycopg_pool import ConnectionPool

            params = named("psycopg-pool")
            params.pop("connect_timeout", None)
            conninfo = " ".join(f"{k}={v}" for k, v in params.items())
            pool = ConnectionPool(
                conninfo, min_size=1, max_size=1, check=ConnectionPool.check_connection, open=True
            )
            stack.callback(pool.close)
            pool.wait()

            def with_pool(event: Any, context: Any) -> None:
                with pool.connection() as conn:
                    conn.execute("INSERT INTO bench_items (v) VALUES (%s)", (1,))

            handlers[PSYCOPG_POOL] = with_pool

        handlers = {p: handlers[p] for p in PATTERNS if p in handlers}  # the table's order
        for handler in handlers.values():  # warm: each has its one connection open
            handler({}, LambdaContext(timeout=30.0))
        yield handlers


APPLICATION = {
    NAIVE: "naive",
    OURS: "lambda-db",
    OURS_AUTOCOMMIT: "lambda-db",
    SQLALCHEMY: "sqlalchemy",
    PSYCOPG_POOL: "psycopg-pool",
}


def statements(invocations: int = 20) -> dict[str, Any]:
    """What each pattern sends per warm invocation, from a private server's statement log;
    and what lambda-db sends and opens for invocations that never use the database."""
    with LocalPostgres(statement_log=True) as pg:
        role, password = "bench_app", "pw-" + secrets.token_urlsafe(12)
        pg.create_role(role, password)
        pg.create_database("bench", owner=role)
        _table(pg, role, "bench")
        kwargs = pg.connect_kwargs(user=role, password=password, dbname="bench")
        counts: dict[str, Any] = {}
        with _handlers(kwargs, "count") as handlers:
            for pattern, handler in handlers.items():
                start = _log_position(pg)
                for _ in range(invocations):
                    handler({}, LambdaContext(timeout=30.0))
                sent = _statements_since(pg, start, f"count-{APPLICATION[pattern]}")
                counts[pattern] = {
                    "per_invocation": len(sent) / invocations,
                    "statements": _shape(sent[: len(sent) // invocations]),
                }
        counts["untouched"] = _untouched(pg, kwargs, invocations)
        return counts


def _untouched(pg: LocalPostgres, kwargs: Mapping[str, Any], invocations: int) -> dict[str, Any]:
    """A cold environment whose invocations never use the database: what each pattern opens."""
    settings = lambda_db.Settings(
        host=kwargs["host"], port=int(kwargs["port"]), dbname=kwargs["dbname"],
        user=kwargs["user"], password=kwargs["password"], sslmode="disable",
        application_name="untouched-lambda-db",
    )  # fmt: skip
    db = lambda_db.Database(settings)

    @lambda_db.with_connection(database=db)
    def ours(event: Any, context: Any) -> int:
        return 400  # a malformed request, refused before any database work

    start = _log_position(pg)
    for _ in range(invocations):
        ours({}, LambdaContext(timeout=30.0))
    naive_conn = psycopg2.connect(**{**kwargs, "application_name": "untouched-naive"})
    naive_conn.close()  # the article's module-level connect, at the cold start
    records = _records_since(pg, start)
    db.close()
    return {
        "invocations": invocations,
        "lambda-db": {
            "connections": _count(records, "untouched-lambda-db", connections=True),
            "statements": _count(records, "untouched-lambda-db", connections=False),
        },
        "naive": {
            "connections": _count(records, "untouched-naive", connections=True),
            "statements": _count(records, "untouched-naive", connections=False),
        },
    }


#: The calibration case: exactly one round trip (``SELECT 1`` in autocommit).
ONE_ROUND_TRIP = "one round trip (SELECT 1, autocommit)"


def latency(
    kwargs: Mapping[str, Any], pg: LocalPostgres, *, rounds: int, calls: int
) -> dict[str, Any]:
    """Median ms per invocation, direct and through the +1 ms relay, interleaved.

    ``round_trips`` divides each pattern's added latency by that of one bare round trip
    measured the same way (the relay's own cost per hop included), so it reads as a count.
    """
    cases = (*PATTERNS, ONE_ROUND_TRIP)
    samples: dict[str, dict[str, list[float]]] = {c: {"direct": [], "relayed": []} for c in cases}
    with (
        DelayRelay(pg.host, pg.port, one_way=ONE_WAY) as relay,
        _handlers(kwargs, "direct") as direct,
        _handlers({**kwargs, "host": relay.host, "port": relay.port}, "relayed") as relayed,
        ExitStack() as stack,
    ):
        relayed_kwargs = {**kwargs, "host": relay.host, "port": relay.port}
        for handlers, target in ((direct, kwargs), (relayed, relayed_kwargs)):
            bare = psycopg2.connect(**target)
            bare.autocommit = True
            stack.callback(bare.close)
            handlers[ONE_ROUND_TRIP] = _ping_handler(bare)
        for _ in range(rounds):
            for case in cases:
                for where, handlers in (("direct", direct), ("relayed", relayed)):
                    handler = handlers[case]
                    for _ in range(calls):
                        start = time.perf_counter()
                        handler({}, LambdaContext(timeout=30.0))
                        samples[case][where].append((time.perf_counter() - start) * 1000)
    medians = {
        case: (statistics.median(by["direct"]), statistics.median(by["relayed"]))
        for case, by in samples.items()
    }
    per_trip = medians[ONE_ROUND_TRIP][1] - medians[ONE_ROUND_TRIP][0]
    return {
        case: {
            "direct_ms": direct_ms,
            "relayed_ms": relayed_ms,
            "round_trips": (relayed_ms - direct_ms) / per_trip,
        }
        for case, (direct_ms, relayed_ms) in medians.items()
    }


def _ping_handler(conn: Any) -> Handler:
    cur = conn.cursor()

    def ping(event: Any, context: Any) -> None:
        cur.execute("SELECT 1")

    return ping


def last_level_cache() -> int | None:
    """The largest CPU cache's size in bytes (Linux ``sysfs``), or ``None``."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        if text[:-1].isdigit() and text[-1] in "KM":
            sizes.append(int(text[:-1]) * (1024 if text[-1] == "K" else 1024**2))
    return max(sizes, default=None)


def cold_evict() -> int:
    """What the cold-cache CPU run writes through before each invocation: twice the
    last-level cache (one pass of its own size left 15-20% of a 4 MiB working set
    cached on this machine's 32 MiB L3), 64 MiB when the size is unknown."""
    size = last_level_cache()
    return 2 * size if size else 64 * 1024**2


def cpu(kwargs: Mapping[str, Any], *, rounds: int, calls: int, evict: int = 0) -> dict[str, Any]:
    """CPU µs per warm invocation (every thread of the process), medians of interleaved
    batches, and each pattern's ratio to the naive one: the median of the rounds' own
    ratios, each batch against the naive batch of its round (a shared machine's load drifts
    between rounds, and a ratio of two medians taken from different rounds carries it).

    With ``evict`` (bytes), a buffer that size is written through, one byte per cache
    line, before every invocation, and only the invocation is timed (its two clock reads
    included: about 3 µs more than warm): little of the previous invocation is left in
    any cache level, a colder bound than many processes sharing few cores (the load
    run's 50 environments on 2 cores, which share the machine code of libpython, libpq
    and psycopg2) leave."""
    samples: dict[str, list[float]] = {p: [] for p in PATTERNS}
    buffer = bytearray(evict)
    lines = bytes(len(range(0, evict, 64)))
    with _handlers(kwargs, "cpu") as handlers:
        contexts = [LambdaContext(timeout=900.0) for _ in range(calls)]
        for _ in range(rounds):
            for pattern in PATTERNS:
                handler = handlers[pattern]
                if evict:
                    spent = 0.0
                    for context in contexts:
                        buffer[::64] = lines
                        start = time.process_time()
                        handler({}, context)
                        spent += time.process_time() - start
                else:
                    start = time.process_time()
                    for context in contexts:
                        handler({}, context)
                    spent = time.process_time() - start
                samples[pattern].append(spent / calls * 1e6)
    medians = {p: statistics.median(v) for p, v in samples.items()}
    naive = samples[NAIVE]
    return {
        "rounds": rounds,
        "calls_per_round": calls,
        "evict_bytes": evict,
        "cpu_us": medians,
        "ratio_to_naive": {
            p: statistics.median(x / n for x, n in zip(v, naive, strict=True))
            for p, v in samples.items()
        },
        "ratio_of_medians": {p: m / medians[NAIVE] for p, m in medians.items()},
    }


def instructions(kwargs: Mapping[str, Any], *, calls: int) -> dict[str, Any] | None:
    """Instructions per warm invocation under callgrind (``None`` without valgrind): each
    pattern runs ``calls`` and ``5 * calls`` invocations in two processes, both making
    ``5 * calls`` contexts first; the difference over ``4 * calls`` leaves out the
    start-up, the warm-up and the test harness's contexts: the handler's own cost."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    counts: dict[str, float] = {}
    for pattern in PATTERNS:
        totals = [_callgrind(valgrind, kwargs, pattern, n, 5 * calls) for n in (calls, 5 * calls)]
        counts[pattern] = (totals[1] - totals[0]) / (4 * calls)
    return {
        "calls": 4 * calls,
        "instructions": counts,
        "ratio_to_naive": {p: c / counts[NAIVE] for p, c in counts.items()},
    }


_CHILD = """
import json, sys
from bench.invocation import _handlers
from lambda_db.testing import LambdaContext
kwargs, pattern, calls = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
made = int(sys.argv[4])
with _handlers(kwargs, "callgrind", only=pattern) as handlers:
    handler = handlers[pattern]
    contexts = [LambdaContext(timeout=900.0) for _ in range(made)]
    for context in contexts[:calls]:
        handler({}, context)
"""


def _callgrind(
    valgrind: str, kwargs: Mapping[str, Any], pattern: str, calls: int, contexts: int
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [
                valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
                sys.executable, "-c", _CHILD, json.dumps(dict(kwargs)), pattern,
                str(calls), str(contexts),
            ],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no total:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def run(pg: LocalPostgres, kwargs: Mapping[str, Any], *, quick: bool) -> dict[str, Any]:
    """Every measure of this module (``kwargs``: psycopg2 arguments for the bench's role)."""
    _table(pg, kwargs["user"], kwargs["dbname"])
    return {
        "statements": statements(),
        "latency": latency(kwargs, pg, rounds=3 if quick else 9, calls=20 if quick else 50),
        "cpu": cpu(kwargs, rounds=5 if quick else 21, calls=200 if quick else 1000),
        "cpu_cold": cpu(
            kwargs, rounds=3 if quick else 11, calls=50 if quick else 200, evict=cold_evict()
        ),
        "instructions": instructions(kwargs, calls=50 if quick else 250),
    }


# -- the statement log -------------------------------------------------------------------


def _log_position(pg: LocalPostgres) -> int:
    _sync(pg)
    return pg.statement_log_path.stat().st_size


def _sync(pg: LocalPostgres) -> None:
    """Wait until everything logged so far is in the file (the collector is asynchronous)."""
    marker = f"bench-sync-{secrets.token_hex(6)}"
    pg.execute("SELECT %s", (marker,))
    deadline = time.monotonic() + 10
    while marker not in pg.statement_log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError("the statement log did not catch up in 10 s")
        time.sleep(0.01)


def _records_since(pg: LocalPostgres, position: int) -> list[dict[str, Any]]:
    _sync(pg)
    with pg.statement_log_path.open("rb") as f:
        f.seek(position)
        return [json.loads(line) for line in f.read().decode(errors="replace").splitlines()]


def _statements_since(pg: LocalPostgres, position: int, application: str) -> list[str]:
    out = []
    for record in _records_since(pg, position):
        message = str(record.get("message", ""))
        if record.get("application_name") != application:
            continue
        if message.startswith("statement: "):
            out.append(message.removeprefix("statement: "))
        elif message.startswith("execute "):
            out.append(message.split(": ", 1)[-1])
    return out


def _count(records: list[dict[str, Any]], application: str, *, connections: bool) -> int:
    if connections:  # "connection authorized: user=... application_name=..."
        return sum(
            1
            for r in records
            if str(r.get("message", "")).startswith("connection authorized")
            and f"application_name={application}" in str(r.get("message", ""))
        )
    return sum(
        1
        for r in records
        if r.get("application_name") == application
        and str(r.get("message", "")).startswith(("statement: ", "execute "))
    )


def _shape(sent: list[str]) -> list[str]:
    """Statements with their literals elided, for the report."""
    return [re.sub(r"\b\d+\b|'[^']*'", "?", " ".join(s.split()))[:60] for s in sent]
