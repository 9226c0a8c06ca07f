"""``lambda-db capacity``: how many connections an RDS instance allows, and who may use them.

RDS for PostgreSQL defaults ``max_connections`` to
``LEAST({DBInstanceClassMemory/9531392}, 5000)``. ``DBInstanceClassMemory`` is the
class's memory *less* what the OS and RDS processes take, and AWS publishes no table of
it, so the figure computed here from the class's nominal memory is an **upper bound**:
the real value is what ``SHOW max_connections`` says (pass it with ``--max-connections``).

From that limit the command does the seed article's pool math,
``(pool_size + max_overflow) x replicas``, and its Lambda form: with lambda-db every
execution environment holds one connection, so peak connections = concurrency; through
RDS Proxy the proxy opens at most ``MaxConnectionsPercent`` of ``max_connections``.

Example::

    $ lambda-db capacity --instance-class db.t3.micro --lambda-concurrency 100
    >>> plan = plan_capacity(max_connections=112, lambda_concurrency=100)
    >>> plan.usable, plan.alarm_at, plan.lambda_budget, plan.lambda_fits
    (109, 89, 89, False)
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lambda_db.cli._connection import (
    CommandError,
    UsageError,
    add_connection_options,
    connect,
    describe,
)
from lambda_db.cli._output import print_json, summary, table

__all__ = [
    "INSTANCE_CLASSES",
    "RDS_MAX_CONNECTIONS_CAP",
    "RDS_MEMORY_DIVISOR",
    "CapacityPlan",
    "add_parser",
    "max_connections_upper_bound",
    "plan_capacity",
    "run",
]

logger = logging.getLogger(__name__)

#: RDS's default: ``max_connections = LEAST({DBInstanceClassMemory/9531392}, 5000)``.
RDS_MEMORY_DIVISOR = 9531392
RDS_MAX_CONNECTIONS_CAP = 5000
GIB = 1024**3

#: PostgreSQL's default ``superuser_reserved_connections``.
DEFAULT_RESERVED = 3
#: The article's alarm: "alert at 80% of max_connections, not 100%".
DEFAULT_THRESHOLD = 0.8
#: SQLAlchemy's defaults, the settings in the article's pool math.
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10


def _family(prefix: str, sizes: dict[str, int]) -> dict[str, int]:
    return {f"{prefix}.{size}": gib for size, gib in sizes.items()}


_BURSTABLE = {"micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16, "2xlarge": 32}
_M_GRAVITON = {
    "large": 8,
    "xlarge": 16,
    "2xlarge": 32,
    "4xlarge": 64,
    "8xlarge": 128,
    "12xlarge": 192,
    "16xlarge": 256,
}
_R_GRAVITON = {
    "large": 16,
    "xlarge": 32,
    "2xlarge": 64,
    "4xlarge": 128,
    "8xlarge": 256,
    "12xlarge": 384,
    "16xlarge": 512,
}

#: Nominal memory in GiB of common RDS instance classes (AWS's instance-class tables).
INSTANCE_CLASSES: dict[str, int] = {
    **_family("db.t3", _BURSTABLE),
    **_family("db.t4g", _BURSTABLE),
    **_family("db.m5", {**_M_GRAVITON, "24xlarge": 384}),
    **_family("db.m6g", _M_GRAVITON),
    **_family("db.m7g", _M_GRAVITON),
    **_family("db.r5", {**_R_GRAVITON, "24xlarge": 768}),
    **_family("db.r6g", _R_GRAVITON),
    **_family("db.r7g", _R_GRAVITON),
}


def max_connections_upper_bound(memory_gib: float) -> int:
    """RDS's default ``max_connections`` if all of ``memory_gib`` were DBInstanceClassMemory.

    The real DBInstanceClassMemory is smaller, so the real default is lower.

    >>> [max_connections_upper_bound(g) for g in (1, 2, 4, 16, 64)]
    [112, 225, 450, 1802, 5000]
    """
    return min(int(memory_gib * GIB) // RDS_MEMORY_DIVISOR, RDS_MAX_CONNECTIONS_CAP)


@dataclass(frozen=True)
class CapacityPlan:
    """The arithmetic, every figure named; see :func:`plan_capacity`."""

    max_connections: int
    upper_bound: bool
    instance_class: str | None
    memory_gib: float | None
    reserved: int
    usable: int
    threshold: float
    alarm_at: int
    other_connections: int
    lambda_budget: int
    lambda_concurrency: int | None
    lambda_fits: bool | None
    pool_size: int
    max_overflow: int
    replicas: int | None
    pool_connections: int | None
    pool_fits: bool | None
    max_replicas: int
    proxy_max_connections_percent: int
    proxy_max_connections: int
    recommended_max_connections_percent: int
    recommended_max_idle_connections_percent: int
    function_timeout: float | None
    recommended_borrow_timeout: int | None
    recommendations: list[str] = field(default_factory=list)
    #: ``user@host:port/dbname`` when the figures were read from a server.
    source: str | None = None

    @property
    def fits(self) -> bool:
        """False when a stated workload (concurrency or pool math) exceeds the budget."""
        return self.lambda_fits is not False and self.pool_fits is not False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "fits": self.fits}


def plan_capacity(
    *,
    max_connections: int,
    upper_bound: bool = False,
    instance_class: str | None = None,
    memory_gib: float | None = None,
    reserved: int = DEFAULT_RESERVED,
    threshold: float = DEFAULT_THRESHOLD,
    other_connections: int = 0,
    lambda_concurrency: int | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
    replicas: int | None = None,
    proxy_max_connections_percent: int = 100,
    function_timeout: float | None = None,
) -> CapacityPlan:
    """Budget ``max_connections`` between Lambda, pooled services and everyone else.

    * ``usable = max_connections - reserved`` (superuser slots; ordinary roles get the rest)
    * ``alarm_at = floor(threshold x max_connections)`` (CloudWatch ``DatabaseConnections``)
    * ``lambda_budget = min(alarm_at, usable) - other_connections``: the reserved
      concurrency of all functions connecting directly, one connection per environment
    * ``pool_connections = (pool_size + max_overflow) x replicas`` (the article's math)
    * RDS Proxy: ``floor(max_connections x MaxConnectionsPercent / 100)`` server
      connections; recommended ``MaxConnectionsPercent`` keeps ``other_connections``
      and the superuser slots outside the proxy's share and stays under the alarm;
      ``ConnectionBorrowTimeout`` a third of the function timeout.

    >>> p = plan_capacity(max_connections=100, replicas=10)
    >>> p.pool_connections, p.pool_fits, p.max_replicas, p.recommended_max_connections_percent
    (150, False, 5, 80)
    """
    usable = max(max_connections - reserved, 0)
    alarm_at = math.floor(threshold * max_connections)
    budget = max(min(alarm_at, usable) - other_connections, 0)
    per_replica = pool_size + max_overflow
    pool_connections = per_replica * replicas if replicas is not None else None
    proxy_max = math.floor(max_connections * proxy_max_connections_percent / 100)
    rec_pct = math.floor(100 * budget / max_connections) if max_connections else 0
    borrow = max(1, math.floor(function_timeout / 3)) if function_timeout is not None else None
    plan = CapacityPlan(
        max_connections=max_connections,
        upper_bound=upper_bound,
        instance_class=instance_class,
        memory_gib=memory_gib,
        reserved=reserved,
        usable=usable,
        threshold=threshold,
        alarm_at=alarm_at,
        other_connections=other_connections,
        lambda_budget=budget,
        lambda_concurrency=lambda_concurrency,
        lambda_fits=None if lambda_concurrency is None else lambda_concurrency <= budget,
        pool_size=pool_size,
        max_overflow=max_overflow,
        replicas=replicas,
        pool_connections=pool_connections,
        pool_fits=None if pool_connections is None else pool_connections <= budget,
        max_replicas=budget // per_replica if per_replica else 0,
        proxy_max_connections_percent=proxy_max_connections_percent,
        proxy_max_connections=proxy_max,
        recommended_max_connections_percent=rec_pct,
        recommended_max_idle_connections_percent=rec_pct // 2,
        function_timeout=function_timeout,
        recommended_borrow_timeout=borrow,
    )
    return _with_recommendations(plan)


def _with_recommendations(p: CapacityPlan) -> CapacityPlan:
    recs: list[str] = []
    if p.upper_bound:
        recs.append(
            f"{p.max_connections} is an upper bound from nominal memory; run "
            "SHOW max_connections on the instance and re-run with --max-connections N."
        )
    if p.lambda_concurrency is not None and not p.lambda_fits:
        recs.append(
            f"Concurrency {p.lambda_concurrency} needs {p.lambda_concurrency} direct "
            f"connections but the budget is {p.lambda_budget}: set the functions' reserved "
            f"concurrency (summed) to <= {p.lambda_budget}, or connect through RDS Proxy."
        )
    else:
        recs.append(
            f"Direct connections with lambda-db: keep the summed reserved concurrency of the "
            f"functions using this instance <= {p.lambda_budget} (one connection per "
            "execution environment)."
        )
    if p.pool_connections is not None and not p.pool_fits:
        recs.append(
            f"Pool math: ({p.pool_size} + {p.max_overflow}) x {p.replicas} = "
            f"{p.pool_connections} connections > the budget of {p.lambda_budget}: "
            f"at most {p.max_replicas} replicas with these pool settings, or a pooler "
            "(pgBouncer) in front."
        )
    recs.append(
        f"RDS Proxy: MaxConnectionsPercent={p.recommended_max_connections_percent} "
        f"(= {p.lambda_budget} of {p.max_connections}, leaving the superuser slots and "
        f"{p.other_connections} other connections outside), MaxIdleConnectionsPercent="
        f"{p.recommended_max_idle_connections_percent}."
    )
    if p.recommended_borrow_timeout is not None:
        recs.append(
            f"RDS Proxy: ConnectionBorrowTimeout={p.recommended_borrow_timeout} s, a third of "
            f"the function timeout ({p.function_timeout:g} s): a full pool then fails the "
            "invocation with time left to answer, instead of timing it out."
        )
    else:
        recs.append(
            "RDS Proxy: set ConnectionBorrowTimeout below the function timeout (its default, "
            "120 s, is longer than most); pass --function-timeout to compute it."
        )
    recs.append(
        f"Alarm on CloudWatch DatabaseConnections >= {p.alarm_at} "
        f"({int(p.threshold * 100)}% of max_connections)."
    )
    return CapacityPlan(**{**asdict(p), "recommendations": recs})


# -- command line ----------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``capacity`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "capacity",
        help="max_connections of an instance class, pool math and Lambda concurrency",
        description=summary(__doc__),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--instance-class", metavar="CLASS", help="an RDS class such as db.t3.micro"
    )
    source.add_argument(
        "--max-connections", type=int, metavar="N", help="the real value (SHOW max_connections)"
    )
    source.add_argument(
        "--from-server",
        action="store_true",
        help="read max_connections and the reserved slots from the server (DB_* or --dsn)",
    )
    parser.add_argument(
        "--reserved",
        type=int,
        metavar="N",
        help=f"reserved superuser slots (default {DEFAULT_RESERVED}, or the server's)",
    )
    parser.add_argument(
        "--other-connections",
        type=int,
        default=0,
        metavar="N",
        help="connections of everything else: admin, migrations, services",
    )
    parser.add_argument(
        "--lambda-concurrency",
        type=int,
        metavar="N",
        help="peak concurrent executions of the functions connecting directly",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=DEFAULT_POOL_SIZE,
        metavar="N",
        help="pool_size per replica, for the pool math (default %(default)s)",
    )
    parser.add_argument(
        "--max-overflow",
        type=int,
        default=DEFAULT_MAX_OVERFLOW,
        metavar="N",
        help="max_overflow per replica (default %(default)s)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="processes each holding a pool (enables the pool math)",
    )
    parser.add_argument(
        "--proxy-max-connections-percent",
        type=int,
        default=100,
        metavar="P",
        help="RDS Proxy MaxConnectionsPercent (default %(default)s)",
    )
    parser.add_argument(
        "--function-timeout",
        type=float,
        metavar="SECONDS",
        help="the functions' timeout, to size ConnectionBorrowTimeout",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="alarm threshold, 0..1 (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_connection_options(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the class table, or the plan for one instance. Exit 1 when a workload won't fit."""
    reserved = DEFAULT_RESERVED if args.reserved is None else args.reserved
    source: str | None = None
    from_server = args.from_server or args.dsn is not None
    if from_server and (args.instance_class is not None or args.max_connections is not None):
        raise UsageError("--dsn reads the server: drop --instance-class and --max-connections")
    if not from_server and args.instance_class is None and args.max_connections is None:
        return _print_classes(args.json)
    memory: float | None = None
    if from_server:
        max_conn, server_reserved, source = _read_server(args)
        upper, cls = False, None
        reserved = server_reserved if args.reserved is None else args.reserved
    elif args.instance_class is not None:
        name = (
            args.instance_class
            if args.instance_class.startswith("db.")
            else ("db." + args.instance_class)
        )
        if name not in INSTANCE_CLASSES:
            raise UsageError(
                f"unknown instance class {args.instance_class!r}; "
                "run 'lambda-db capacity' for the table, or pass --max-connections N"
            )
        memory = INSTANCE_CLASSES[name]
        max_conn = max_connections_upper_bound(INSTANCE_CLASSES[name])
        upper, cls = True, name
    else:
        max_conn, upper, cls = args.max_connections, False, None
    plan = plan_capacity(
        max_connections=max_conn,
        upper_bound=upper,
        instance_class=cls,
        memory_gib=memory,
        reserved=reserved,
        threshold=args.threshold,
        other_connections=args.other_connections,
        lambda_concurrency=args.lambda_concurrency,
        pool_size=args.pool_size,
        max_overflow=args.max_overflow,
        replicas=args.replicas,
        proxy_max_connections_percent=args.proxy_max_connections_percent,
        function_timeout=args.function_timeout,
    )
    if source is not None:
        plan = CapacityPlan(**{**asdict(plan), "source": source})
    if args.json:
        print_json(plan.to_dict())
    else:
        print(render(plan))
    return 0 if plan.fits else 1


def _read_server(args: argparse.Namespace) -> tuple[int, int, str]:
    """(max_connections, reserved slots, where) from the server the arguments name."""
    conn = connect(args, "capacity")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT current_setting('max_connections')::int,"
                " current_setting('superuser_reserved_connections')::int"
                " + coalesce(current_setting('reserved_connections', true), '0')::int"
            )
            row = cur.fetchone()
        where = describe(conn)
    finally:
        conn.close()
    if row is None:  # pragma: no cover - a SELECT without FROM returns one row
        raise CommandError("the server returned no settings")
    return int(row[0]), int(row[1]), where


def _print_classes(as_json: bool) -> int:
    rows = [(name, gib, max_connections_upper_bound(gib)) for name, gib in INSTANCE_CLASSES.items()]
    if as_json:
        print_json(
            [
                {"instance_class": n, "memory_gib": g, "max_connections_at_most": m}
                for n, g, m in rows
            ]
        )
        return 0
    print("RDS for PostgreSQL default max_connections = LEAST(DBInstanceClassMemory/9531392, 5000)")
    print("from nominal memory: an upper bound (DBInstanceClassMemory is less than nominal RAM)\n")
    print(table(["instance class", "memory GiB", "max_connections <="], rows))
    return 0


def render(p: CapacityPlan) -> str:
    """The plan as text (what ``lambda-db capacity`` prints)."""
    lines: list[str] = []
    if p.instance_class:
        lines.append(
            f"{p.instance_class}: {p.memory_gib:g} GiB nominal memory -> max_connections "
            f"<= {p.max_connections}"
        )
        lines.append(
            "  LEAST(DBInstanceClassMemory/9531392, 5000), an upper bound: DBInstanceClassMemory"
        )
        lines.append("  is below nominal memory; SHOW max_connections gives the real value")
    elif p.source:
        lines.append(f"max_connections = {p.max_connections} (SHOW max_connections on {p.source})")
    else:
        lines.append(f"max_connections = {p.max_connections}")
    lines.append("")
    rows: list[tuple[str, Any, str]] = [
        (
            "max_connections",
            p.max_connections,
            "upper bound" if p.upper_bound else ("the server's" if p.source else "given"),
        ),
        ("reserved", p.reserved, "superuser_reserved_connections (+ reserved_connections)"),
        ("usable by ordinary roles", p.usable, "max_connections - reserved"),
        (f"alarm at {int(p.threshold * 100)}%", p.alarm_at, "CloudWatch DatabaseConnections"),
        ("other connections", p.other_connections, "admin, migrations, services"),
        ("budget", p.lambda_budget, "min(alarm, usable) - other: Lambda or pools"),
    ]
    if p.lambda_concurrency is not None:
        verdict = "fits" if p.lambda_fits else "DOES NOT FIT"
        rows.append(("Lambda concurrency", p.lambda_concurrency, f"1 per environment: {verdict}"))
    if p.pool_connections is not None:
        verdict = "fits" if p.pool_fits else "DOES NOT FIT"
        rows.append(
            (
                "pool math",
                p.pool_connections,
                f"({p.pool_size} + {p.max_overflow}) x {p.replicas} replicas: {verdict}",
            )
        )
    rows.append(
        (
            "RDS Proxy connections",
            p.proxy_max_connections,
            f"max_connections x MaxConnectionsPercent {p.proxy_max_connections_percent}%",
        )
    )
    lines.append(table(["", "connections", "how"], rows))
    lines.append("")
    lines.append("Recommendations")
    lines.extend(f"  - {r}" for r in p.recommendations)
    return "\n".join(lines)
