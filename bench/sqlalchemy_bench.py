"""SQLAlchemy on Lambda, per warm invocation: lambda-db's pool of one against SQLAlchemy's own
pools and the article's naive module-level psycopg2 connection, in the same run.

Every case runs the same invocation: one ORM ``INSERT ... RETURNING id`` (the naive case:
the same SQL through psycopg2) and its ``COMMIT``, on a connection opened by an earlier
invocation (warm), as one Lambda execution environment would:

* ``SQLAlchemy via lambda-db``: ``@with_session`` on ``lambda_db.sqlalchemy.create_engine()``;
* ``SQLAlchemy QueuePool(pool_pre_ping=True)``: ``pool_size=1``, a ``Session`` per invocation;
* ``SQLAlchemy NullPool``: a new connection per invocation (what #10237 weighs against it);
* ``naive psycopg2``: ``with conn, conn.cursor()`` on a module-level connection (the baseline);
* ``lambda-db with_connection``: the same SQL without SQLAlchemy, for the ORM's share.

Three figures per case, in interleaved rounds (A B C, A B C, ...):

* statements per invocation, counted on the wire (simple-protocol ``Query`` and extended
  ``Execute`` messages from the client) by a relay in front of the server, and new
  connections per invocation;
* CPU per invocation: ``time.thread_time()`` of the invoking thread, on the same pass;
* latency per invocation through ``DelayRelay(one_way=0.0005)``: every round trip costs
  1 ms more, about what a Lambda function pays to reach RDS Proxy.

Both relays run in a child process of their own: Python threads relaying in the measuring
process would compete with it for the GIL and show up in its latency.

And the import cost of ``lambda_db.sqlalchemy``, beside ``sqlalchemy`` itself and
``import lambda_db`` (which must not import SQLAlchemy at all).

Everything is measured twice, for two builds of the same SQLAlchemy version: ``compiled``,
the bench venv's wheel with its Cython extensions, in this process; and ``pure``, its
pure-Python modules, in a child process whose ``sitecustomize`` makes every
``sqlalchemy.*_cy`` import load the ``.py`` beside the extension (and which sets SQLAlchemy
2.0's ``DISABLE_SQLALCHEMY_CEXT_RUNTIME``). ``pure`` is what the stock function deploys:
``functions/stock/Makefile`` installs SQLAlchemy's pure-Python wheel, which runs on either
Lambda architecture. Each build reports whether the extensions were loaded.

``run(env, rounds)`` takes the ``DB_*`` variables of a role that may create a table in its
database; ``render(results)`` gives Markdown lines. Standalone:
``python -m bench.sqlalchemy_bench`` starts its own server and prints the section.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy
from sqlalchemy import BigInteger, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool, QueuePool

import lambda_db
from bench.timing import import_cost
from lambda_db.sqlalchemy import create_engine, with_session
from lambda_db.testing import LambdaContext
from lambda_db_lab.delay import DelayRelay

__all__ = ["BUILDS", "CASES", "render", "run"]

LAMBDA_DB = "SQLAlchemy via lambda-db (with_session)"
PRE_PING = "SQLAlchemy QueuePool(pool_pre_ping=True)"
NULLPOOL = "SQLAlchemy NullPool"
NAIVE = "naive psycopg2 module-level connection"
RAW = "lambda-db with_connection (no SQLAlchemy)"
CASES = (LAMBDA_DB, PRE_PING, NULLPOOL, NAIVE, RAW)

#: Invocations per case per round: on the counting pass (CPU, statements) and through the
#: delay relay (each costs a few milliseconds there).
COUNT_CALLS = 200
DELAY_CALLS = 40
#: +1 ms per round trip.
ONE_WAY = 0.0005
TABLE = "sqla_bench"
IMPORTS = ("lambda_db", "lambda_db.sqlalchemy", "sqlalchemy", "sqlalchemy.orm")
#: The SQLAlchemy builds measured: with the Cython extensions, and pure Python (deployed).
COMPILED, PURE = "compiled", "pure"
BUILDS = (COMPILED, PURE)
#: Installed as ``sitecustomize`` for the pure-Python child (and the interpreters it starts
#: for the import costs): every ``sqlalchemy.*._cy`` module loads from its ``.py`` source.
PURE_SITECUSTOMIZE = """\
import importlib.util, os, sys


class PurePythonSQLAlchemy:
    def find_spec(self, name, path=None, target=None):
        if not (path and name.startswith("sqlalchemy.") and name.endswith("_cy")):
            return None
        for entry in path:
            source = os.path.join(entry, name.rpartition(".")[2] + ".py")
            if os.path.exists(source):
                return importlib.util.spec_from_file_location(name, source)
        return None


sys.meta_path.insert(0, PurePythonSQLAlchemy())
"""
_ROOT = str(Path(__file__).resolve().parents[1])  # where ``-m bench.sqlalchemy_bench`` runs

Invocation = Callable[[], object]


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    note: Mapped[str] = mapped_column(Text)


# -- the wire ------------------------------------------------------------------------------


@dataclass
class _Tally:
    statements: int = 0
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class StatementCounter:
    """A relay to ``upstream`` that counts what clients send: statements (``Q`` and ``E``
    messages) and connections. Clients must not ask for TLS (``sslmode=disable``).

    Runs in the child process :class:`RelayProcess` starts.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self.tally = _Tally()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="count-accept", daemon=True).start()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def totals(self) -> tuple[int, int]:
        with self.tally.lock:
            return self.tally.statements, self.tally.connections

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            with self.tally.lock:
                self.tally.connections += 1
            threading.Thread(
                target=self._client_to_server, args=(client, server), daemon=True
            ).start()
            threading.Thread(target=_pump, args=(server, client), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        startup = True  # the startup packet (and an SSLRequest before it) has no type byte
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_WR)
                return
            buffer += data
            while True:
                if startup:
                    if len(buffer) < 8:
                        break
                    (length,) = struct.unpack("!I", buffer[:4])
                    if len(buffer) < length:
                        break
                    code = struct.unpack("!I", buffer[4:8])[0]
                    startup = code in (80877103, 80877104)  # SSL/GSS request: startup follows
                    buffer = buffer[length:]
                    continue
                if len(buffer) < 5:
                    break
                kind = buffer[:1]
                (length,) = struct.unpack("!I", buffer[1:5])
                if len(buffer) < 1 + length:
                    break
                if kind in (b"Q", b"E"):
                    with self.tally.lock:
                        self.tally.statements += 1
                buffer = buffer[1 + length :]
            try:
                server.sendall(data)
            except OSError:
                return


def _pump(src: socket.socket, dst: socket.socket) -> None:
    while True:
        try:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        except OSError:
            break
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class RelayProcess:
    """A relay in a child process: ``counter`` (:class:`StatementCounter`) or ``delay``
    (:class:`~lambda_db_lab.delay.DelayRelay`, ``one_way`` seconds each way)."""

    def __init__(self, kind: str, upstream: tuple[str, int], one_way: float = 0.0) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "bench.sqlalchemy_bench", "--relay", kind,
             upstream[0], str(upstream[1]), str(one_way)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT,
        )  # fmt: skip
        assert self._child.stdout is not None and self._child.stdin is not None
        self._out, self._in = self._child.stdout, self._child.stdin
        self.host, self.port = "127.0.0.1", int(self._out.readline())

    def totals(self) -> tuple[int, int]:
        """(statements, connections) the counter has seen so far."""
        self._in.write("?\n")
        self._in.flush()
        statements, connections = self._out.readline().split()
        return int(statements), int(connections)

    def close(self) -> None:
        self._in.close()
        try:
            self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()


def _serve_relay(kind: str, host: str, port: str, one_way: str) -> None:
    """The child's side: print the port, answer ``?`` with the totals, stop at EOF."""
    upstream = (host, int(port))
    if kind == "counter":
        counter = StatementCounter(upstream)
        print(counter.port, flush=True)
        for _ in sys.stdin:
            print(*counter.totals(), flush=True)
        counter.close()
    else:
        with DelayRelay(*upstream, one_way=float(one_way)) as relay:
            print(relay.port, flush=True)
            for _ in sys.stdin:
                print(0, 0, flush=True)


# -- the cases -------------------------------------------------------------------------------


@contextlib.contextmanager
def _cases(env: Mapping[str, str], host: str, port: int) -> Iterator[dict[str, Invocation]]:
    """One warm invocation per case, every connection to ``host:port``."""
    env = {**env, "DB_HOST": host, "DB_PORT": str(port), "DB_SSLMODE": "disable"}
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "dbname": env["DB_NAME"],
        "user": env["DB_USER"],
        "password": env["DB_PASSWORD"],
        "sslmode": "disable",
        "application_name": "bench-sqlalchemy",
    }
    context = LambdaContext(timeout=3600.0)  # one context: its deadline is never near
    with contextlib.ExitStack() as stack:
        settings = lambda_db.Settings.from_env(env)
        db = lambda_db.Database(settings)
        stack.callback(db.close)
        engine = create_engine(db)
        raw_db = lambda_db.Database(settings)
        stack.callback(raw_db.close)

        @with_session(engine)
        def ours(event: Any, context: Any, session: Session) -> int:
            row = _Row(note="x")
            session.add(row)
            session.flush()
            return row.id

        @lambda_db.with_connection(database=raw_db)
        def raw(event: Any, context: Any) -> int:
            with raw_db.get_connection().cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} (note) VALUES (%s) RETURNING id", ("x",))
                row = cur.fetchone()
                assert row is not None  # RETURNING always gives a row
                return int(row[0])

        def plain(**options: Any) -> Invocation:
            engine = sqlalchemy.create_engine(
                "postgresql+psycopg2://", creator=lambda: psycopg2.connect(**kwargs), **options
            )
            stack.callback(engine.dispose)

            def invocation() -> int:
                with Session(engine) as session, session.begin():
                    row = _Row(note="x")
                    session.add(row)
                    session.flush()
                    return row.id

            return invocation

        naive_conn = psycopg2.connect(**kwargs)
        stack.callback(naive_conn.close)

        def naive() -> int:
            with naive_conn, naive_conn.cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} (note) VALUES (%s) RETURNING id", ("x",))
                row = cur.fetchone()
                assert row is not None  # RETURNING always gives a row
                return int(row[0])

        cases: dict[str, Invocation] = {
            LAMBDA_DB: lambda: ours({}, context),
            PRE_PING: plain(poolclass=QueuePool, pool_size=1, max_overflow=0, pool_pre_ping=True),
            NULLPOOL: plain(poolclass=NullPool),
            NAIVE: naive,
            RAW: lambda: raw({}, context),
        }
        for invocation in cases.values():
            invocation()  # cold: connect, and SQLAlchemy's first-connect reads
            invocation()
        yield cases


def _create_table(env: Mapping[str, str]) -> None:
    conn = psycopg2.connect(
        host=env["DB_HOST"], port=env["DB_PORT"], dbname=env["DB_NAME"], user=env["DB_USER"],
        password=env["DB_PASSWORD"], sslmode="disable",
    )  # fmt: skip
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, note text)")
    finally:
        conn.close()


def run(env: Mapping[str, str], rounds: int) -> dict[str, Any]:
    """Statements, CPU and latency per warm invocation for every case, and import costs, for
    both SQLAlchemy builds (:data:`BUILDS`)."""
    _create_table(env)
    return {
        "rounds": rounds,
        "calls": {"counted": COUNT_CALLS, "delayed": DELAY_CALLS},
        "one_way_ms": ONE_WAY * 1000,
        "builds": {COMPILED: measure(env, rounds), PURE: _measure_pure_python(env, rounds)},
        "import_lambda_db_loads_sqlalchemy": _loads_sqlalchemy(),
    }


def measure(env: Mapping[str, str], rounds: int) -> dict[str, Any]:
    """One build's figures, measured in this process with the SQLAlchemy it imported."""
    upstream = (env["DB_HOST"], int(env["DB_PORT"]))
    statements: dict[str, list[float]] = {name: [] for name in CASES}
    connections: dict[str, list[float]] = {name: [] for name in CASES}
    cpu_us: dict[str, list[float]] = {name: [] for name in CASES}
    latency_ms: dict[str, list[float]] = {name: [] for name in CASES}

    counter = RelayProcess("counter", upstream)
    try:
        with _cases(env, counter.host, counter.port) as cases:
            for _ in range(rounds):
                for name, invocation in cases.items():
                    sent, opened = counter.totals()
                    cpu = time.thread_time()
                    for _ in range(COUNT_CALLS):
                        invocation()
                    cpu_us[name].append((time.thread_time() - cpu) / COUNT_CALLS * 1e6)
                    now_sent, now_opened = counter.totals()
                    statements[name].append((now_sent - sent) / COUNT_CALLS)
                    connections[name].append((now_opened - opened) / COUNT_CALLS)
    finally:
        counter.close()

    relay = RelayProcess("delay", upstream, ONE_WAY)
    try:
        with _cases(env, relay.host, relay.port) as cases:
            for _ in range(rounds):
                for name, invocation in cases.items():
                    for _ in range(DELAY_CALLS):
                        start = time.perf_counter()
                        invocation()
                        latency_ms[name].append((time.perf_counter() - start) * 1000)
    finally:
        relay.close()

    naive_cpu = statistics.median(cpu_us[NAIVE])
    naive_latency = statistics.median(latency_ms[NAIVE])
    return {
        "version": sqlalchemy.__version__,
        "extensions": _extensions_loaded(),
        "cases": {
            name: {
                "statements": statistics.median(statements[name]),
                "connections": statistics.median(connections[name]),
                "cpu_us": statistics.median(cpu_us[name]),
                "cpu_vs_naive": statistics.median(cpu_us[name]) / naive_cpu,
                "latency_ms": statistics.median(latency_ms[name]),
                "latency_p99_ms": _p99(latency_ms[name]),
                "latency_vs_naive": statistics.median(latency_ms[name]) / naive_latency,
            }
            for name in CASES
        },
        "imports": import_cost(list(IMPORTS), repeats=max(5, 2 * rounds + 1)),
    }


def _measure_pure_python(env: Mapping[str, str], rounds: int) -> dict[str, Any]:
    """:func:`measure` in a child whose SQLAlchemy runs without its compiled extensions."""
    with tempfile.TemporaryDirectory(prefix="sqla-pure-") as site:
        Path(site, "sitecustomize.py").write_text(PURE_SITECUSTOMIZE)
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([site, _ROOT]),
            "DISABLE_SQLALCHEMY_CEXT_RUNTIME": "1",  # SQLAlchemy 2.0's own switch
        }
        out = subprocess.run(
            [sys.executable, "-m", "bench.sqlalchemy_bench", "--measure", str(rounds)],
            input=json.dumps(dict(env)), capture_output=True, text=True, check=True,
            cwd=_ROOT, env=child_env,
        ).stdout  # fmt: skip
    figures: dict[str, Any] = json.loads(out.splitlines()[-1])
    if figures["extensions"]:
        raise RuntimeError("the pure-Python child still loaded SQLAlchemy's extensions")
    return figures


def _extensions_loaded() -> bool:
    """Whether this process's SQLAlchemy runs its compiled (Cython) extensions."""
    try:
        from sqlalchemy.util._has_cython import HAS_CYEXTENSION  # 2.1
    except ImportError:  # 2.0
        from sqlalchemy.util._has_cy import HAS_CYEXTENSION  # type: ignore[import-not-found,no-redef]
    return bool(HAS_CYEXTENSION)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _loads_sqlalchemy() -> list[str]:
    """The ``sqlalchemy`` modules in ``sys.modules`` after ``import lambda_db`` (expected: none)."""
    code = (
        "import sys, lambda_db; "
        "print(' '.join(m for m in sys.modules if m.startswith('sqlalchemy')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    return out.split()


# -- the report ------------------------------------------------------------------------------


def render(results: Mapping[str, Any]) -> list[str]:
    """The section as Markdown lines."""
    builds = results["builds"]
    version = builds[COMPILED]["version"]
    lines = [
        "## SQLAlchemy on Lambda: per warm invocation",
        "",
        "One ORM `INSERT ... RETURNING id` and its `COMMIT` per invocation, on a connection an "
        "earlier invocation opened (NullPool: a new connection each time). Statements and new "
        "connections counted on the wire; CPU is the invoking thread's "
        f"(`time.thread_time`, {results['calls']['counted']} invocations x {results['rounds']} "
        f"rounds); latency through a relay adding {results['one_way_ms']:g} ms each way "
        f"(+{2 * results['one_way_ms']:g} ms per round trip; "
        f"{results['calls']['delayed']} invocations x {results['rounds']} rounds). Medians; "
        "ratios against the naive module-level connection in the same run.",
        "",
        f"SQLAlchemy {version} is measured twice: **pure Python**, what the stock function "
        "deploys (`functions/stock/Makefile` installs the pure-Python wheel, for either Lambda "
        "architecture), in a child process whose SQLAlchemy loads no compiled module; and "
        "**compiled**, the bench venv's wheel with its Cython extensions "
        f"(loaded: {'yes' if builds[COMPILED]['extensions'] else 'no'}), what a function "
        "that vendors a platform wheel runs.",
    ]
    for build, title in ((PURE, "pure Python (deployed)"), (COMPILED, "compiled extensions")):
        cases = builds[build]["cases"]
        lines += [
            "",
            f"### SQLAlchemy {version}, {title}",
            "",
            "| case | statements | new connections | CPU µs | CPU ÷ naive | latency ms (p99) "
            "| latency ÷ naive |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in CASES:
            c = cases[name]
            lines.append(
                f"| {name} | {c['statements']:.2f} | {c['connections']:.2f} "
                f"| {c['cpu_us']:.0f} | {c['cpu_vs_naive']:.2f} "
                f"| {c['latency_ms']:.2f} ({c['latency_p99_ms']:.2f}) "
                f"| {c['latency_vs_naive']:.2f} |"
            )
    pure, compiled = builds[PURE]["imports"], builds[COMPILED]["imports"]
    loaded = results["import_lambda_db_loads_sqlalchemy"]
    lines += [
        "",
        "Import cost (fresh interpreters, medians of "
        f"{compiled['lambda_db']['repeats']}): what `lambda_db.sqlalchemy` adds at cold "
        "start, paid only by functions that import it.",
        "",
        "| import | pure Python: -X importtime ms | wall ms "
        "| compiled: -X importtime ms | wall ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for module in IMPORTS:
        p, c = pure[module], compiled[module]
        lines.append(
            f"| `{module}` | {p['importtime_ms']:.1f} | {p['wall_ms']:.1f} "
            f"| {c['importtime_ms']:.1f} | {c['wall_ms']:.1f} |"
        )
    lines += [
        "",
        "`import lambda_db` loads "
        + (
            f"{len(loaded)} SQLAlchemy module(s): {', '.join(loaded[:5])}"
            if loaded
            else "no SQLAlchemy module"
        )
        + ".",
        "",
    ]
    return lines


def main() -> None:
    """Run the section on a server of its own and print it (``--relay``: a relay's child;
    ``--measure``: the pure-Python build's child)."""
    if sys.argv[1:2] == ["--relay"]:
        _serve_relay(*sys.argv[2:6])
        return
    if sys.argv[1:2] == ["--measure"]:  # the pure-Python child: the DB_* variables on stdin
        print(json.dumps(measure(json.loads(sys.stdin.read()), int(sys.argv[2]))))
        return
    from lambda_db_lab.appdb import ledger_app_db
    from lambda_db_lab.localpg import LocalPostgres

    rounds = int(os.environ.get("ROUNDS", "5"))
    with LocalPostgres() as pg:
        app_db = ledger_app_db(pg, "bench")
        print("\n".join(render(run(dict(app_db), rounds))))


if __name__ == "__main__":
    main()
