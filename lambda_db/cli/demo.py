"""``lambda-db demo``: the seed article's incident and its fixes, side by side, for real.

On a PostgreSQL server it starts itself (:class:`lambda_db_lab.localpg.LocalPostgres`) the
demo creates a role with ``CONNECTION LIMIT`` (10 by default) and bursts N simulated
Lambda execution environments, separate processes, each serving M invocations in a row
(every fourth order is malformed, so the handler's error path runs):

1. **naive**: the article's anti-pattern, a connection per invocation whose ``close()``
   the error path skips. Leaked sessions pile up until the server answers
   ``FATAL: too many connections for role "demo_app"``.
2. **lambda-db**: the same handler with ``@with_connection`` and ``get_connection()``:
   one connection per environment, so at most N server connections and no failures
   (when N is at most the limit).
3. **naive via pgbouncer** (when ``pgbouncer`` is installed): the anti-pattern behind a
   transaction-mode pooler. The leaked clients stay connected to pgBouncer, which
   serves them all with ``--pool-size`` server connections: the article's ``SHOW POOLS``
   check, ``cl_active`` against ``sv_active``.

A sampler polls ``pg_stat_activity`` (and ``SHOW POOLS``) every 20 ms for the peak
number of server connections (and of pgBouncer's clients, ``cl_active + cl_waiting``).
Progress goes to stderr, the final table to stdout.

Example::

    $ lambda-db demo                                   # 8 environments x 25 invocations
    $ lambda-db demo --environments 4 --invocations 10 --limit 6 --json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from lambda_db.cli._connection import UsageError
from lambda_db.cli._output import print_json, summary, table

if TYPE_CHECKING:
    from lambda_db_lab.environments import Pattern, Plan
    from lambda_db_lab.ledger import Outcome
    from lambda_db_lab.localpg import LocalPostgres
    from lambda_db_lab.pgbouncer import PgBouncer

__all__ = ["DemoConfig", "DemoResult", "PhaseResult", "add_parser", "run", "run_demo"]

logger = logging.getLogger(__name__)

#: How often the sampler reads pg_stat_activity and SHOW POOLS.
SAMPLE_INTERVAL = 0.02

#: Each environment's context counts down from this (the demo's function timeout).
FUNCTION_TIMEOUT_MS = 10_000
_COUNT_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'"
)


@dataclass(frozen=True)
class DemoConfig:
    """The burst: ``environments`` processes x ``invocations`` each, against ``limit``.

    >>> DemoConfig().environments, DemoConfig().limit
    (8, 10)
    """

    environments: int = 8
    invocations: int = 25
    limit: int = 10
    bad_every: int = 4
    work_ms: float = 20.0
    pool_size: int = 4
    pooler: bool = True
    phase_timeout: float = 120.0


@dataclass
class PhaseResult:
    """One run of the burst: outcomes, the sampled peak and latencies."""

    name: str
    title: str
    environments: int
    invocations: int = 0
    ok: int = 0
    bad_events: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    peak_server_connections: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    seconds: float = 0.0
    peak_clients: int | None = None
    show_pools: dict[str, Any] | None = None

    @property
    def failed(self) -> int:
        """Invocations that failed for a reason other than their bad event."""
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "failed": self.failed}


@dataclass
class DemoResult:
    """Every phase, with what the demo set out to show, checked."""

    config: DemoConfig
    server_version: str
    role: str
    phases: list[PhaseResult]
    pooler_skipped: str | None = None

    def phase(self, name: str) -> PhaseResult | None:
        """The phase called ``name`` (``naive``, ``lambda-db``, ``pgbouncer``)."""
        return next((p for p in self.phases if p.name == name), None)

    def checks(self) -> list[tuple[bool, str]]:
        """(held, statement) for each claim the demo makes."""
        c = self.config
        out: list[tuple[bool, str]] = []
        naive, fixed, pooled = self.phase("naive"), self.phase("lambda-db"), self.phase("pgbouncer")
        if naive is not None:
            too_many = sum(n for e, n in naive.failures.items() if "too many connections" in e)
            out.append(
                (
                    too_many > 0,
                    f"naive: {too_many} x 'too many connections for role "
                    f'"{self.role}"\' (limit {c.limit})',
                )
            )
        if fixed is not None:
            fits = c.environments <= c.limit
            out.append(
                (
                    fixed.failed == 0 or not fits,
                    f"lambda-db: {fixed.failed} connection failures"
                    + ("" if fits else f" ({c.environments} environments > limit {c.limit})"),
                )
            )
            out.append(
                (
                    fixed.peak_server_connections <= c.environments,
                    f"lambda-db: peak {fixed.peak_server_connections} server connections for "
                    f"{c.environments} environments",
                )
            )
        if pooled is not None:
            out.append(
                (
                    pooled.failed == 0 and pooled.peak_server_connections <= c.pool_size,
                    f"pgbouncer: {pooled.peak_clients} clients on "
                    f"{pooled.peak_server_connections} server connections "
                    f"(pool size {c.pool_size}), {pooled.failed} failures",
                )
            )
        return out

    @property
    def ok(self) -> bool:
        """True when every claim held."""
        return all(held for held, _ in self.checks())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "config": asdict(self.config),
            "server_version": self.server_version,
            "role": self.role,
            "phases": [p.to_dict() for p in self.phases],
            "pooler_skipped": self.pooler_skipped,
            "checks": [{"held": held, "claim": claim} for held, claim in self.checks()],
            "ok": self.ok,
        }


class _Sampler(threading.Thread):
    """Polls the role's server connections (and pgBouncer's pools) for peaks."""

    def __init__(self, admin: psycopg2.extensions.connection, role: str) -> None:
        super().__init__(name="demo-sampler", daemon=True)
        self._admin = admin
        self._role = role
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._bouncer: PgBouncer | None = None
        self._console: psycopg2.extensions.connection | None = None
        self.current = self.peak = 0
        self.peak_clients = 0
        self.peak_pools: dict[str, Any] | None = None

    def watch(self, bouncer: PgBouncer | None) -> None:
        """Start a new phase: reset the peaks; also poll ``bouncer``'s pools when given."""
        with self._lock:
            if self._console is not None:
                self._console.close()
            self._bouncer = bouncer
            self._console = bouncer.admin() if bouncer else None
            self.current = self.peak = self.peak_clients = 0
            self.peak_pools = None

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_INTERVAL):
            with self._lock:
                try:
                    self._sample()
                except psycopg2.Error as exc:  # a missed sample, not a reason to stop
                    logger.warning("sampling failed: %s", str(exc).strip())

    def _sample(self) -> None:
        with self._admin.cursor() as cur:
            cur.execute(_COUNT_SQL, (self._role,))
            row = cur.fetchone()
        self.current = int(row[0]) if row else 0
        self.peak = max(self.peak, self.current)
        if self._bouncer is None or self._console is None:
            return
        for pool in self._bouncer.show_pools(self._console):
            clients = int(pool["cl_active"]) + int(pool["cl_waiting"])
            if pool.get("user") == self._role and clients >= self.peak_clients:
                self.peak_clients = clients
                self.peak_pools = pool

    def close(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)
        with self._lock:
            if self._console is not None:
                self._console.close()
                self._console = None


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, else once a second."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._tty = bool(stream and stream.isatty())
        self._last = 0.0

    def say(self, text: str) -> None:
        if self._stream is None:
            return
        if self._tty:
            self._stream.write("\r\033[K")
        self._stream.write(text + "\n")
        self._stream.flush()

    def update(self, text: str, *, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if self._tty:
            self._stream.write("\r\033[K" + text)
            self._stream.flush()
        elif force or now - self._last >= 1.0:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last = now

    def end_line(self) -> None:
        if self._stream is not None and self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile.

    >>> _percentile([1.0, 2.0, 3.0, 4.0], 0.5), _percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _run_phase(
    name: str,
    title: str,
    plan: Plan,
    sampler: _Sampler,
    progress: _Progress,
    config: DemoConfig,
) -> PhaseResult:
    """Burst ``config.environments`` environments running ``plan``; the phase's figures."""
    from lambda_db_lab.environments import Environments

    phase = PhaseResult(name=name, title=title, environments=config.environments)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    total = config.environments * config.invocations

    def count(outcome: Outcome) -> None:
        latencies.append(outcome.elapsed)
        phase.invocations += 1
        if outcome.ok:
            phase.ok += 1
        elif outcome.is_a("BadEvent"):
            phase.bad_events += 1
        else:
            failures[failure_label(outcome.error or "?", outcome.message)] += 1
        progress.update(
            f"  {title:<22} {phase.invocations:>4}/{total} invocations  ok {phase.ok}  "
            f"bad events {phase.bad_events}  failed {sum(failures.values())}  "
            f"server connections {sampler.current} (peak {sampler.peak})"
            + (f"  pgbouncer clients {sampler.peak_clients}" if name == "pgbouncer" else ""),
            force=phase.invocations == total,
        )

    try:
        with Environments(plan, config.environments, on_outcome=count) as envs:
            envs.finish(timeout=config.phase_timeout)
            phase.seconds = time.monotonic() - envs.released
            time.sleep(3 * SAMPLE_INTERVAL)  # one more sample with every environment alive
    finally:
        progress.end_line()
    phase.failures = dict(failures.most_common())
    phase.peak_server_connections = sampler.peak
    phase.p50_ms = round(_percentile(latencies, 0.50) * 1000, 1)
    phase.p99_ms = round(_percentile(latencies, 0.99) * 1000, 1)
    if name == "pgbouncer":
        phase.peak_clients = sampler.peak_clients
        phase.show_pools = sampler.peak_pools
    return phase


def failure_label(error: str, message: str) -> str:
    """A short, stable name for a failure: the exception type and the server's words.

    >>> failure_label("OperationalError",
    ...     'connection to server at "127.0.0.1", port 5432 failed: '
    ...     'FATAL:  too many connections for role "app"')
    'OperationalError: FATAL: too many connections for role "app"'
    """
    text = " ".join(message.split())
    if "FATAL:" in text:
        text = text[text.index("FATAL:") :]
    return f"{error}: {text[:160]}"


def _wait_drained(admin: psycopg2.extensions.connection, role: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin.cursor() as cur:
            cur.execute(_COUNT_SQL, (role,))
            row = cur.fetchone()
        if not row or row[0] == 0:
            return
        time.sleep(0.05)
    logger.warning("sessions of %s still open after %g s", role, timeout)


@contextlib.contextmanager
def _server(server: LocalPostgres | None, config: DemoConfig) -> Iterator[LocalPostgres]:
    if server is not None:
        yield server
        return
    from lambda_db_lab.localpg import LocalPostgres

    max_connections = max(50, 2 * (config.limit + config.environments) + 10)
    with LocalPostgres(tls=False, settings={"max_connections": str(max_connections)}) as pg:
        yield pg


def run_demo(
    config: DemoConfig | None = None,
    *,
    server: LocalPostgres | None = None,
    progress: TextIO | None = None,
) -> DemoResult:
    """Run the phases and return the figures (progress lines go to ``progress``).

    ``server``: an already running :class:`~lambda_db_lab.localpg.LocalPostgres` to use
    (tests pass theirs); the demo then works in a role and database of its own and
    drops them afterwards. Without it the demo starts and removes its own server.

    Example::

        result = run_demo(DemoConfig(environments=4, invocations=8, limit=5))
        assert result.phase("naive").failed > 0 and result.phase("lambda-db").failed == 0
    """
    config = config or DemoConfig()
    out = _Progress(progress)
    suffix = "" if server is None else "_" + secrets.token_hex(3)
    role, dbname, password = f"demo_app{suffix}", f"demo{suffix}", secrets.token_urlsafe(16)
    if server is None:
        out.say("Starting a throwaway PostgreSQL server ...")
    with _server(server, config) as pg:
        pg.create_role(role, password, connlimit=config.limit)
        pg.create_database(dbname, owner=role)
        admin = pg.admin()
        sampler: _Sampler | None = None
        try:
            with admin.cursor() as cur:
                cur.execute("SHOW server_version")
                row = cur.fetchone()
            version = str(row[0]).split()[0] if row else "?"
            _create_schema(pg.connect_kwargs(user=role, password=password, dbname=dbname))
            out.say(
                f"PostgreSQL {version} on {pg.host}:{pg.port}; role {role} CONNECTION LIMIT "
                f"{config.limit}; {config.environments} environments x {config.invocations} "
                f"invocations, every {config.bad_every}th event bad"
            )
            sampler = _Sampler(admin, role)
            sampler.start()
            environ = _environ(pg.host, pg.port, dbname, role, password)
            result = DemoResult(config=config, server_version=version, role=role, phases=[])
            naive = {**environ, "DB_APPLICATION_NAME": "demo-naive"}
            result.phases.append(
                _phase(config, "naive", "1 naive", "connect-per-invocation", naive, sampler, out)
            )
            _wait_drained(admin, role)
            result.phases.append(
                _phase(config, "lambda-db", "2 lambda-db", "lambda-db", environ, sampler, out)
            )
            _wait_drained(admin, role)
            result.pooler_skipped = _pooler_phase(
                config, pg.port, dbname, role, password, sampler, out, result
            )
            _wait_drained(admin, role)
        finally:
            if sampler is not None:
                sampler.close()
            admin.close()
            if server is not None:
                _drop(pg, role, dbname)
    return result


def _phase(
    config: DemoConfig,
    name: str,
    title: str,
    pattern: Pattern,
    environ: dict[str, str],
    sampler: _Sampler,
    out: _Progress,
    bouncer: PgBouncer | None = None,
) -> PhaseResult:
    from lambda_db_lab.environments import Plan

    plan = Plan(
        env=environ,
        pattern=pattern,
        invocations=config.invocations,
        timeout_ms=FUNCTION_TIMEOUT_MS,
        work=config.work_ms / 1000,
        bad_every=config.bad_every,
        hold=True,  # a leaked connection stays open until the burst is over
    )
    sampler.watch(bouncer)
    return _run_phase(name, title, plan, sampler, out, config)


def _pooler_phase(
    config: DemoConfig,
    port: int,
    dbname: str,
    role: str,
    password: str,
    sampler: _Sampler,
    out: _Progress,
    result: DemoResult,
) -> str | None:
    """Phase 3 when pgbouncer is installed; otherwise why it was skipped."""
    if not config.pooler:
        return "--no-pooler"
    from lambda_db_lab.pgbouncer import PgBouncer, find_pgbouncer

    if find_pgbouncer() is None:
        out.say("pgbouncer is not installed (make system-deps): skipping part 3")
        return "pgbouncer not installed"
    with PgBouncer(
        server_port=port, dbname=dbname, users={role: password}, pool_size=config.pool_size
    ) as bouncer:
        result.phases.append(
            _phase(
                config,
                "pgbouncer",
                "3 naive via pgbouncer",
                "connect-per-invocation",
                {
                    **_environ(bouncer.host, bouncer.port, dbname, role, password),
                    "DB_APPLICATION_NAME": "demo-naive",
                },
                sampler,
                out,
                bouncer,
            )
        )
        sampler.watch(None)
    return None


def _environ(host: str, port: int, dbname: str, role: str, password: str) -> dict[str, str]:
    """The functions' ``DB_*`` variables (password mode, no TLS: a local server)."""
    return {
        "DB_HOST": host,
        "DB_PORT": str(port),
        "DB_NAME": dbname,
        "DB_USER": role,
        "DB_PASSWORD": password,
        "DB_AUTH_MODE": "password",
        "DB_SSLMODE": "disable",
        "DB_APPLICATION_NAME": "demo-lambda-db",
    }


def _create_schema(kwargs: dict[str, Any]) -> None:
    """The ledger's table (one row per successful invocation), owned by the demo's role."""
    from lambda_db_lab.ledger import DDL

    conn = psycopg2.connect(**kwargs)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(DDL)
    finally:
        conn.close()


def _drop(pg: LocalPostgres, role: str, dbname: str) -> None:
    with contextlib.suppress(psycopg2.Error):
        pg.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- output ----------------------------------------------------------------------------


def render(result: DemoResult) -> str:
    """The final table, the failures by error, SHOW POOLS and the checks."""
    c = result.config
    lines = [
        "",
        f"{c.environments} environments x {c.invocations} invocations against role "
        f"{result.role} (CONNECTION LIMIT {c.limit}), PostgreSQL {result.server_version}",
        "",
        table(
            [
                "run",
                "invocations",
                "ok",
                "bad events",
                "failed",
                "peak server conns",
                "p50 ms",
                "p99 ms",
            ],
            [
                (
                    p.title,
                    p.invocations,
                    p.ok,
                    p.bad_events,
                    p.failed,
                    p.peak_server_connections,
                    p.p50_ms,
                    p.p99_ms,
                )
                for p in result.phases
            ],
        ),
        "",
        "Failures by error ('bad events' are the malformed orders, failing by design):",
    ]
    any_failure = False
    for p in result.phases:
        for error, count in p.failures.items():
            any_failure = True
            lines.append(f"  {p.title}: {count} x {error}")
    if not any_failure:
        lines.append("  none")
    pooled = result.phase("pgbouncer")
    if pooled is not None and pooled.show_pools:
        pools = pooled.show_pools
        lines += [
            "",
            f"pgbouncer SHOW POOLS at the peak (pool_mode {pools.get('pool_mode')}, "
            f"default_pool_size {c.pool_size}):",
            table(
                [
                    "database",
                    "user",
                    "cl_active",
                    "cl_waiting",
                    "sv_active",
                    "sv_idle",
                    "sv_used",
                    "maxwait",
                ],
                [
                    [
                        pools.get(k)
                        for k in (
                            "database",
                            "user",
                            "cl_active",
                            "cl_waiting",
                            "sv_active",
                            "sv_idle",
                            "sv_used",
                            "maxwait",
                        )
                    ]
                ],
                indent="  ",
            ),
            f"  {pooled.peak_clients} client connections multiplexed onto at most "
            f"{pooled.peak_server_connections} server connections",
        ]
    elif result.pooler_skipped:
        lines += ["", f"Part 3 (pgbouncer) skipped: {result.pooler_skipped}"]
    lines += [""] + [f"{'ok  ' if held else 'FAIL'} {claim}" for held, claim in result.checks()]
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on the main parser's subparsers."""
    d = DemoConfig()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="reproduce 'too many connections for role' and its fixes on a local server",
        description=summary(__doc__),
    )
    parser.add_argument(
        "--environments",
        "-n",
        type=int,
        default=d.environments,
        metavar="N",
        help="concurrent execution environments (default %(default)s)",
    )
    parser.add_argument(
        "--invocations",
        "-m",
        type=int,
        default=d.invocations,
        metavar="M",
        help="invocations per environment (default %(default)s)",
    )
    parser.add_argument(
        "--limit",
        "-l",
        type=int,
        default=d.limit,
        metavar="L",
        help="the role's CONNECTION LIMIT (default %(default)s)",
    )
    parser.add_argument(
        "--bad-every",
        type=int,
        default=d.bad_every,
        metavar="K",
        help="every K-th event is malformed; 0 for none (default %(default)s)",
    )
    parser.add_argument(
        "--work-ms",
        type=float,
        default=d.work_ms,
        metavar="MS",
        help="query time per invocation (default %(default)s)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=d.pool_size,
        metavar="P",
        help="pgbouncer default_pool_size (default %(default)s)",
    )
    parser.add_argument("--no-pooler", action="store_true", help="skip part 3 (pgbouncer)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 1 when it did not show what it claims."""
    for option in ("environments", "invocations", "limit", "pool_size"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 1")
    config = DemoConfig(
        environments=args.environments,
        invocations=args.invocations,
        limit=args.limit,
        bad_every=args.bad_every,
        work_ms=args.work_ms,
        pool_size=args.pool_size,
        pooler=not args.no_pooler,
    )
    result = run_demo(config, progress=sys.stderr)
    if args.json:
        print_json(result.to_dict())
    else:
        print(render(result))
    return 0 if result.ok else 1
