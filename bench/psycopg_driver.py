"""psycopg 3 as lambda-db's driver (``DB_DRIVER=psycopg``) beside psycopg2 and beside the
naive module-level connection of each driver, on one server in one run.

1. **Per warm invocation**, a one-``INSERT`` handler, in interleaved rounds (a noisy
   neighbour slows every case alike): CPU (``process_time``, the whole process: lambda-db's
   watchdog thread included) and wall time per invocation, medians of batches.

   * lambda-db, ``@with_connection`` on a ``Database`` with ``DB_DRIVER=psycopg2`` / ``psycopg``;
   * naive psycopg2: a module-level connection, reopened when ``conn.closed``, ``with conn:``;
   * naive psycopg 3, as written by default (``psycopg.connect()``: ``prepare_threshold=5``, so
     the ``INSERT`` is a named prepared statement from its sixth run on, which pins RDS Proxy),
     and with ``prepare_threshold=None`` (what lambda-db sends).

2. **Statements per warm invocation**, counted on the wire by a relay that reads the
   client's protocol messages (a simple ``Query`` or an extended ``Execute`` is one
   statement; a ``Query`` or a ``Sync`` is one round trip; a ``Parse`` or ``Bind`` naming a
   statement is a named prepared statement). The relay runs only for this count, never
   while CPU is measured.

3. **Import cost**: ``import lambda_db`` (which must not import psycopg 3), and the psycopg 3
   path (``import lambda_db._psycopg``: what ``DB_DRIVER=psycopg`` adds at the first
   connect), beside ``import psycopg2`` and ``import psycopg``, in fresh interpreters.

Wired into ``python -m bench`` by the lead; alone::

    python -c "from bench.psycopg_driver import main; main()"
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lambda_db
from bench.timing import import_cost
from lambda_db import Database, Settings, with_connection
from lambda_db.testing import LambdaContext

__all__ = ["main", "render", "run"]

TABLE = "bench_driver_items"
INSERT = f"INSERT INTO {TABLE} (n) VALUES (%s)"
#: Invocations per batch, and batches per case per round.
BATCH = 50
BATCHES = 10
#: Warm invocations counted on the wire per case (after enough to pass psycopg's threshold).
COUNTED = 10
WARMUP = 8

LAMBDA_DB = {"psycopg2": "lambda-db, psycopg2", "psycopg": "lambda-db, psycopg 3"}
NAIVE_PG2 = "naive psycopg2"
NAIVE_PG3 = "naive psycopg 3 (defaults: prepares, pins)"
NAIVE_PG3_UNPREPARED = "naive psycopg 3, prepare_threshold=None"

Invocation = Callable[[int], None]


# -- the cases ---------------------------------------------------------------------------


def _connect_kwargs(env: Mapping[str, str], port: int | None = None) -> dict[str, Any]:
    return {
        "host": env["DB_HOST"],
        "port": int(port if port is not None else env.get("DB_PORT", "5432")),
        "dbname": env["DB_NAME"],
        "user": env["DB_USER"],
        "password": env["DB_PASSWORD"],
        "sslmode": "disable",  # loopback; and the counting relay must read the protocol
        "application_name": "bench-driver",
    }


@contextlib.contextmanager
def _cases(env: Mapping[str, str], port: int | None = None) -> Iterator[dict[str, Invocation]]:
    """One warm invocation per case (``fn(n)``), every case connected; closed afterwards."""
    import psycopg
    import psycopg2

    kwargs = _connect_kwargs(env, port)
    with contextlib.ExitStack() as stack:
        cases: dict[str, Invocation] = {}
        for driver, name in LAMBDA_DB.items():
            overrides = {
                "DB_DRIVER": driver,
                "DB_SSLMODE": "disable",
                "DB_PORT": str(kwargs["port"]),
            }
            settings = Settings.from_env({**env, **overrides})
            db = Database(settings)
            stack.callback(db.close)
            cases[name] = _lambda_db_handler(db)

        pg2 = [psycopg2.connect(**kwargs)]
        stack.callback(lambda: pg2[0].close())

        def naive_psycopg2(n: int) -> None:
            if pg2[0].closed:
                pg2[0] = psycopg2.connect(**kwargs)
            with pg2[0] as conn, conn.cursor() as cur:
                cur.execute(INSERT, (n,))

        cases[NAIVE_PG2] = naive_psycopg2
        for name, threshold in ((NAIVE_PG3, 5), (NAIVE_PG3_UNPREPARED, None)):
            conn = psycopg.connect(**kwargs, prepare_threshold=threshold)
            stack.callback(conn.close)
            cases[name] = _naive_psycopg(conn, kwargs)
        for fn in cases.values():
            fn(0)  # connected and warm
        yield cases


def _lambda_db_handler(db: Database) -> Invocation:
    context = LambdaContext(timeout=30.0)

    @with_connection(database=db)
    def handler(event: dict[str, int], context: Any) -> None:
        with db.get_connection().cursor() as cur:
            cur.execute(INSERT, (event["n"],))

    return lambda n: handler({"n": n}, context)


def _naive_psycopg(conn: Any, kwargs: Mapping[str, Any]) -> Invocation:
    import psycopg

    holder = [conn]

    def naive(n: int) -> None:
        if holder[0].closed:
            holder[0] = psycopg.connect(**kwargs, prepare_threshold=conn.prepare_threshold)
        with holder[0].cursor() as cur:
            cur.execute(INSERT, (n,))
        holder[0].commit()

    return naive


# -- CPU and wall time -------------------------------------------------------------------


def per_invocation(cases: Mapping[str, Invocation], rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall microseconds per invocation, batches interleaved by case."""
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    n = 0
    for _ in range(rounds):
        for name, fn in cases.items():
            for _ in range(BATCHES):
                c0, w0 = time.process_time_ns(), time.perf_counter_ns()
                for _ in range(BATCH):
                    n += 1
                    fn(n)
                cpu[name].append((time.process_time_ns() - c0) / BATCH / 1000.0)
                wall[name].append((time.perf_counter_ns() - w0) / BATCH / 1000.0)
    return {
        name: {"cpu_us": statistics.median(cpu[name]), "wall_us": statistics.median(wall[name])}
        for name in cases
    }


# -- statements on the wire --------------------------------------------------------------

_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


class WireCounter:
    """A relay to ``upstream`` that counts what clients send, by protocol message.

    Counts, over every connection: ``statements`` (``Query`` + ``Execute``), ``round_trips``
    (``Query`` + ``Sync``: each waits for ReadyForQuery) and ``named`` (a ``Parse`` or
    ``Bind`` naming a prepared statement: pins RDS Proxy).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.counts = {"statements": 0, "round_trips": 0, "named": 0}
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, parse: bool) -> None:
        buffer, started = b"", False
        try:
            while select.select([src], [], [])[0]:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if parse:  # counted before the server can answer it
                    buffer, started = self._read(buffer + chunk, started)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _read(self, buffer: bytes, started: bool) -> tuple[bytes, bool]:
        """Consume whole messages from ``buffer``; the rest, and whether startup is over."""
        while True:
            if not started:  # untyped: SSLRequest, GSSENCRequest, then the StartupMessage
                if len(buffer) < 8:
                    return buffer, started
                (length, code) = struct.unpack("!ii", buffer[:8])
                if len(buffer) < length:
                    return buffer, started
                buffer, started = buffer[length:], code not in (_SSL_REQUEST, _GSSENC_REQUEST)
                continue
            if len(buffer) < 5:
                return buffer, started
            kind, length = buffer[:1], struct.unpack("!i", buffer[1:5])[0]
            if len(buffer) < 1 + length:
                return buffer, started
            body, buffer = buffer[5 : 1 + length], buffer[1 + length :]
            with self._lock:
                if kind in (b"Q", b"E"):
                    self.counts["statements"] += 1
                if kind in (b"Q", b"S"):
                    self.counts["round_trips"] += 1
                if kind == b"P" and not body.startswith(b"\0"):  # Parse: statement name first
                    self.counts["named"] += 1
                if kind == b"B" and body.split(b"\0", 2)[1:2] != [b""]:  # Bind: portal, name
                    self.counts["named"] += 1


def on_the_wire(env: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Statements, round trips and named prepared statements per warm invocation."""
    counter = WireCounter((env["DB_HOST"], int(env.get("DB_PORT", "5432"))))
    try:
        with _cases(env, port=counter.port) as cases:
            figures = {}
            for name, fn in cases.items():
                for n in range(WARMUP):  # past psycopg's prepare_threshold
                    fn(n)
                before = counter.snapshot()
                for n in range(COUNTED):
                    fn(n)
                after = counter.snapshot()
                figures[name] = {k: (after[k] - before[k]) / COUNTED for k in after}
            return figures
    finally:
        counter.close()


# -- import cost -------------------------------------------------------------------------

_LOADS_PSYCOPG = (
    "import sys, lambda_db\n"
    "print(sorted(m for m in sys.modules if m == 'psycopg' or m.startswith(('psycopg.', "
    "'psycopg_binary'))))\n"
)


def imports(repeats: int) -> dict[str, Any]:
    """Fresh-interpreter import costs, and which psycopg 3 modules ``import lambda_db`` loads."""
    costs = import_cost(["lambda_db", "lambda_db._psycopg", "psycopg2", "psycopg"], repeats=repeats)
    loaded = subprocess.run(
        [sys.executable, "-c", _LOADS_PSYCOPG], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {"costs": costs, "psycopg_modules_after_import_lambda_db": loaded}


# -- the section -------------------------------------------------------------------------


def run(env: Mapping[str, str], rounds: int) -> dict[str, Any]:
    """Every figure of this module against the database in ``env`` (``DB_*`` variables of a
    role that owns its database, password mode). ``rounds``: interleaved CPU rounds."""
    import psycopg2

    admin = psycopg2.connect(**_connect_kwargs(env))
    with admin, admin.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (n bigint)")
    admin.close()
    lambda_db.reset()
    with _cases(env) as cases:
        timing = per_invocation(cases, rounds)
    wire = on_the_wire(env)
    naive = {"psycopg2": NAIVE_PG2, "psycopg": NAIVE_PG3_UNPREPARED}
    ratios = {
        driver: timing[name]["cpu_us"] / timing[naive[driver]]["cpu_us"]
        for driver, name in LAMBDA_DB.items()
    }
    return {
        "rounds": rounds,
        "invocations_per_case": rounds * BATCHES * BATCH,
        "per_invocation": timing,
        "on_the_wire": wire,
        "cpu_ratio_to_naive_same_driver": ratios,
        "imports": imports(repeats=max(5, rounds)),
    }


def render(results: Mapping[str, Any]) -> list[str]:
    """The section as Markdown lines."""
    timing, wire = results["per_invocation"], results["on_the_wire"]
    lines = [
        "## psycopg 3 as the driver (`DB_DRIVER=psycopg`)",
        "",
        f"A warm one-`INSERT` invocation, {results['invocations_per_case']:,} per case in "
        f"{results['rounds']} interleaved rounds (medians of {BATCH}-invocation batches); "
        "statements counted on the wire after the cases were warm.",
        "",
        "| case | CPU µs/invocation | wall µs/invocation | statements | round trips "
        "| named prepared |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in timing.items():
        w = wire.get(name, {})
        lines.append(
            f"| {name} | {t['cpu_us']:.1f} | {t['wall_us']:.1f} | {w.get('statements', 0):g} "
            f"| {w.get('round_trips', 0):g} | {w.get('named', 0):g} |"
        )
    ratios = results["cpu_ratio_to_naive_same_driver"]
    lines += [
        "",
        "CPU against the naive connection of the same driver (psycopg 3's without prepares): "
        + ", ".join(f"{d} {r:.2f}x" for d, r in ratios.items())
        + ".",
        "",
        "| import (fresh interpreter) | wall ms | `-X importtime` ms |",
        "|---|---:|---:|",
    ]
    for module, cost in results["imports"]["costs"].items():
        lines.append(f"| `import {module}` | {cost['wall_ms']:.1f} | {cost['importtime_ms']:.1f} |")
    loaded = results["imports"]["psycopg_modules_after_import_lambda_db"]
    lines += ["", f"psycopg 3 modules loaded by `import lambda_db`: {loaded}.", ""]
    return lines


def main() -> None:
    """Run against a throwaway server and print the Markdown."""
    from lambda_db_lab.appdb import ledger_app_db
    from lambda_db_lab.localpg import LocalPostgres

    with LocalPostgres() as pg:
        app_db = ledger_app_db(pg, "bench")
        os.environ.pop("DB_DRIVER", None)
        print("\n".join(render(run(dict(app_db), rounds=int(os.environ.get("ROUNDS", "9"))))))


if __name__ == "__main__":
    main()
