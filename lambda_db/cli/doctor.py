"""``lambda-db doctor``: the seed article's Step 1, with limits, stragglers and advice.

Connections grouped by user, database, state and application; ``max_connections`` and
the reserved slots; every role (``rolconnlimit``) and database (``datconnlimit``) limit
with its use and headroom; sessions idle (or idle in transaction) for longer than
``--idle-age``; the effective ``statement_timeout`` and
``idle_in_transaction_session_timeout`` of every login role in sight (the connecting one
and those with sessions), with where each comes from; a warning for each limit at or
above ``--threshold`` (80 %, the article's alarm) and for each role without one of those
timeouts, and recommendations tied to what was found (``ALTER ROLE ... SET`` for a
missing timeout: a role default is applied by the server at login, costs nothing per
invocation and, unlike a ``SET`` sent by the client, does not pin RDS Proxy sessions).
A role that owns the database or tables in it (the master user, a migration role) is
advised differently: its DDL may rightly run for minutes, so it is not told to take the
application's 5-second ``statement_timeout``.

Exit status: 0 when every limit is below the threshold, 1 when one is at or above it
(so it can run from monitoring), 2 when the server cannot be reached. A missing timeout is
warned about but does not change the exit status.

Example::

    $ lambda-db doctor --threshold 0.8 --idle-age 10m
    $ lambda-db doctor --json | jq '.limits[] | select(.utilization >= 0.8)'
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Set
from typing import Any

import psycopg2.extensions

from lambda_db.cli._connection import add_connection_options, connect, describe
from lambda_db.cli._output import (
    format_duration,
    parse_duration,
    percent,
    print_json,
    summary,
    table,
)
from lambda_db.diagnostics import (
    DEFAULT_THRESHOLD,
    TIMEOUT_SETTINGS,
    LimitUsage,
    Report,
    RoleTimeouts,
    collect,
)

__all__ = ["add_parser", "fix_timeouts", "recommendations", "render", "run", "warnings"]

logger = logging.getLogger(__name__)

#: Sessions idle this long are listed as stragglers (the article's kill query uses 10 minutes).
DEFAULT_IDLE_AGE = 10 * 60.0

#: What the advice suggests for a missing timeout. A Lambda function's statements and
#: transactions should end before the function does (10 s in the example stack).
SUGGESTED_TIMEOUTS = {"statement_timeout": "5s", "idle_in_transaction_session_timeout": "10s"}
#: ... and for a role that owns the database or its tables: it runs migrations, whose DDL
#: may rightly take minutes (the example's schema setup has 300 s, 30 of them kept to
#: answer CloudFormation), and an operator's psql session may pause inside a transaction.
OWNER_SUGGESTED_TIMEOUTS = {
    "statement_timeout": "4min",
    "idle_in_transaction_session_timeout": "1min",
}

#: (role, database) pairs where the role owns the database (any database), or a table in
#: the connected one.
_OWNERS_SQL = """
SELECT pg_get_userbyid(datdba), datname FROM pg_database
UNION
SELECT DISTINCT pg_get_userbyid(c.relowner), current_database()
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema'
   AND n.nspname NOT LIKE 'pg\\_%'
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``doctor`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="connection use against every limit, stragglers, recommendations",
        description=summary(__doc__),
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="warn, and exit 1, at this fraction of a limit (default %(default)s)",
    )
    parser.add_argument(
        "--idle-age",
        type=parse_duration,
        default=DEFAULT_IDLE_AGE,
        metavar="DURATION",
        help="list sessions idle at least this long (default 10m)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=50,
        metavar="N",
        help="list at most N idle sessions (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_connection_options(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Collect, print, and exit 1 when a limit is at or above the threshold."""
    conn = connect(args, "doctor")
    try:
        report = collect(conn, idle_age=args.idle_age, max_stragglers=args.max_sessions)
        where = describe(conn)
        owners = owner_pairs(conn)
    finally:
        conn.close()
    found = warnings(report, args.threshold)
    advice = recommendations(report, args.threshold, owners=owners)
    if args.json:
        print_json(
            {
                "connection": where,
                "threshold": args.threshold,
                **report.to_dict(),
                "warnings": found,
                "recommendations": advice,
                "status": "warning" if report.over(args.threshold) else "ok",
            }
        )
    else:
        print(render(report, where=where, threshold=args.threshold, owners=owners))
    return 1 if report.over(args.threshold) else 0


def owner_pairs(conn: psycopg2.extensions.connection) -> frozenset[tuple[str, str]]:
    """(role, database) where the role owns the database, or a table in the connected
    database (read in a transaction of its own, rolled back)."""
    try:
        with conn.cursor() as cur:
            cur.execute(_OWNERS_SQL)
            return frozenset((str(role), str(database)) for role, database in cur.fetchall())
    finally:
        conn.rollback()


def _version(num: int) -> str:
    """``server_version_num`` as PostgreSQL prints it.

    >>> _version(150018), _version(180006)
    ('15.18', '18.6')
    """
    return f"{num // 10000}.{num % 10000}"


def _describe_limit(u: LimitUsage) -> str:
    if u.scope == "server":
        return "the server's non-reserved connection slots"
    return f'{u.scope} "{u.name}"'


def _quote(name: str) -> str:
    """A role or database name as an SQL identifier.

    >>> _quote("app"), _quote('we"ird')
    ('"app"', '"we""ird"')
    """
    return '"' + name.replace('"', '""') + '"'


def _describe_timeouts(t: RoleTimeouts) -> str:
    unset = " and ".join(f"no {name} (0, from the {t.sources[name]})" for name in t.unset)
    return f"role {_quote(t.role)} in database {_quote(t.database)} runs with {unset}"


def warnings(report: Report, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """One line per limit at or above ``threshold``, and per role without a timeout."""
    found = [
        f"{_describe_limit(u)} is at {percent(u.utilization)} of its connection limit "
        f"({u.used} of {u.limit}, headroom {u.headroom})"
        for u in report.over(threshold)
    ]
    found += [_describe_timeouts(t) for t in report.without_timeouts()]
    return found


def fix_timeouts(timeouts: RoleTimeouts, *, owner: bool = False) -> list[str]:
    """The ``ALTER ROLE`` statements that give a role the timeouts it lacks; ``owner``:
    values for a role that owns the database or its tables (it runs migrations).

    >>> missing = RoleTimeouts("app", "db", {"statement_timeout": "0"},
    ...     {"statement_timeout": "server"})
    >>> print(*fix_timeouts(missing))
    ALTER ROLE "app" SET statement_timeout = '5s'
    >>> print(*fix_timeouts(missing, owner=True))
    ALTER ROLE "app" SET statement_timeout = '4min'
    """
    values = OWNER_SUGGESTED_TIMEOUTS if owner else SUGGESTED_TIMEOUTS
    return [
        f"ALTER ROLE {_quote(timeouts.role)} SET {name} = '{values[name]}'"
        for name in timeouts.unset
    ]


def recommendations(
    report: Report,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    owners: Set[tuple[str, str]] = frozenset(),
) -> list[str]:
    """Advice tied to what ``report`` shows; empty when there is nothing to do.
    ``owners``: the (role, database) pairs where the role owns the database or its tables
    (:func:`owner_pairs`), which get timeouts fit for migrations."""
    advice: list[str] = []
    for u in report.over(threshold):
        if u.scope == "server":
            advice.append(
                f"The server is at {percent(u.utilization)} of max_connections: put a pooler "
                "in front (RDS Proxy for Lambda, pgBouncer for long-running services) rather "
                "than raising max_connections (each slot costs memory); 'lambda-db capacity' "
                "does the pool math."
            )
        else:
            states = Counter(
                g.state or "hidden"
                for g in report.groups
                for _ in range(g.count)
                if (g.user if u.scope == "role" else g.database) == u.name
            )
            mix = ", ".join(f"{n} {s}" for s, n in states.most_common())
            advice.append(
                f'{u.scope.capitalize()} "{u.name}" has {u.headroom} connection(s) left '
                f"({mix}). With lambda-db a function holds one connection per execution "
                f"environment, so peak = concurrency: keep the summed reserved concurrency of "
                f"the functions using it <= {u.limit} minus other clients, or connect through "
                "RDS Proxy."
            )
    in_tx = [s for s in report.stragglers if s.state.startswith("idle in transaction")]
    if in_tx and report.idle_in_transaction_session_timeout in ("0", "0ms", "0s"):
        advice.append(
            f"{len(in_tx)} session(s) idle in transaction for over "
            f"{format_duration(report.idle_age)} (oldest {format_duration(in_tx[0].state_age)}) "
            "hold locks and a slot: set idle_in_transaction_session_timeout (ALTER ROLE ... "
            "SET for the roles concerned, or server-wide in the parameter group)."
        )
    for timeouts in report.without_timeouts():
        if (timeouts.role, timeouts.database) in owners:
            statements = "; ".join(fix_timeouts(timeouts, owner=True))
            advice.append(
                f"Role {_quote(timeouts.role)} owns database {_quote(timeouts.database)} or "
                "tables in it: it runs migrations (the example stack's schema setup, whose "
                "function has 300 s), so do not give it the application's short "
                f"statement_timeout. Bound it above its longest migration instead "
                f"({statements}); a migration that needs longer can SET LOCAL its own. "
                "The application's functions should log in as a role of their own, which "
                "gets the short timeouts."
            )
            continue
        statements = "; ".join(fix_timeouts(timeouts))
        advice.append(
            f"Give role {_quote(timeouts.role)} the timeouts it lacks ({statements}), with "
            "values below the timeout of the functions using it: the server then applies "
            "them to every new session of that role, at no cost per invocation and without "
            "pinning RDS Proxy sessions (a SET sent by the client would pin). Sessions "
            "already open keep their old values."
        )
    idle = [s for s in report.stragglers if s.state == "idle"]
    if idle:
        by_user = Counter(s.user or "?" for s in idle)
        user, count = by_user.most_common(1)[0]
        advice.append(
            f"{len(idle)} session(s) idle for over "
            f"{format_duration(report.idle_age)}, most of them ({count}) as {user!r}: leaked "
            "connections, or environments that will not be invoked again. "
            f"'lambda-db terminate-idle --user {user} --older-than "
            f"{format_duration(report.idle_age)}' lists them (a dry run)."
        )
    unknown = sorted(
        {name for t in report.role_timeouts for name, s in t.sources.items() if s == "unknown"}
    )
    if unknown:
        advice.append(
            f"The server's own {' and '.join(unknown)} is hidden from this session (its role "
            "or database overrides it, and only a superuser may read pg_file_settings): roles "
            "shown with '(unknown)' get that value. Check it in the parameter group, or run "
            "the doctor as a role without overrides."
        )
    if report.hidden_sessions:
        advice.append(
            f"{report.hidden_sessions} session(s) of other roles show no state or age: "
            f"GRANT pg_monitor TO {report.current_user} to see them (or run as a superuser)."
        )
    return advice


def render(
    report: Report,
    *,
    where: str,
    threshold: float = DEFAULT_THRESHOLD,
    owners: Set[tuple[str, str]] = frozenset(),
) -> str:
    """The report as text (what ``lambda-db doctor`` prints)."""
    out: list[str] = [
        f"lambda-db doctor: {where}, PostgreSQL {_version(report.server_version_num)}, "
        f"{report.taken_at:%Y-%m-%d %H:%M:%S %Z}",
        "",
        f"Client sessions by user, database, state and application ({report.client_sessions} "
        "in all, this one included)",
    ]
    out.append(
        table(
            ["count", "user", "database", "state", "application"],
            [
                (g.count, g.user, g.database, g.state or "(hidden)", g.application or "-")
                for g in report.groups
            ],
            indent="  ",
        )
    )
    reserved = report.superuser_reserved_connections + report.reserved_connections
    out += [
        "",
        f"Limits (warning at {percent(threshold)}): max_connections {report.max_connections} = "
        f"{report.max_connections - reserved} for ordinary roles + {reserved} reserved",
    ]
    out.append(
        table(
            ["scope", "name", "used", "limit", "use", "headroom", ""],
            [
                (
                    u.scope,
                    u.name,
                    u.used,
                    u.limit,
                    percent(u.utilization),
                    u.headroom,
                    "WARNING" if u.utilization >= threshold else "",
                )
                for u in report.limits
            ],
            indent="  ",
        )
    )
    out += [
        "",
        f"Sessions idle for over {format_duration(report.idle_age)}: {report.straggler_count}",
    ]
    if report.stragglers:
        out.append(
            table(
                ["pid", "user", "database", "application", "state", "for", "connected", "client"],
                [
                    (
                        s.pid,
                        s.user,
                        s.database,
                        s.application or "-",
                        s.state,
                        format_duration(s.state_age),
                        format_duration(s.backend_age),
                        s.client_addr or "local",
                    )
                    for s in report.stragglers
                ],
                indent="  ",
            )
        )
        if report.straggler_count > len(report.stragglers):
            out.append(f"  ... and {report.straggler_count - len(report.stragglers)} more")
    if not report.can_read_all_stats:
        out += [
            "",
            f"Visibility: {report.current_user} sees the state and age of its own sessions "
            f"only ({report.hidden_sessions} other session(s) now counted without them); "
            "pg_monitor shows all.",
        ]
    if report.role_timeouts:
        out += ["", "Session timeouts of login roles (0: never; where each value comes from)"]
        out.append(
            table(
                ["role", "database", *TIMEOUT_SETTINGS, ""],
                [
                    (
                        t.role,
                        t.database,
                        *(
                            f"{t.settings[name] or '?'} ({t.sources[name]})"
                            for name in TIMEOUT_SETTINGS
                        ),
                        "WARNING" if t.unset else "",
                    )
                    for t in report.role_timeouts
                ],
                indent="  ",
            )
        )
    found = warnings(report, threshold)
    out += ["", "Warnings" if found else "Warnings: none"]
    out += [f"  - {w}" for w in found]
    advice = recommendations(report, threshold, owners=owners)
    out += ["", "Recommendations" if advice else "Recommendations: none"]
    out += [f"  - {a}" for a in advice]
    return "\n".join(out)
