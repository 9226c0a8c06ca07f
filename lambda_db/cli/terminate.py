"""``lambda-db terminate-idle``: end a named role's idle sessions, safely.

The seed article's stop-gap (``SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE state = 'idle' AND usename = 'myapp' AND query_start < now() - interval '10
minutes'``) with guard rails:

* a **dry run by default**: it lists what it would end and ends nothing;
* ``--yes`` ends exactly the sessions listed, each in a statement that re-checks, at
  kill time, that the session (``pid`` *and* ``backend_start``, since pids are reused) is
  still in the state, still idle for longer than ``--older-than``, and still matches
  every filter; a session that became active in between is skipped, not killed;
* never its own backend, and never a session of a role not named with ``--user``.

A non-superuser can end the sessions of roles it is a member of (or any, with
``pg_signal_backend``), and sees the state only of those (or all, with ``pg_monitor``).

Example::

    $ lambda-db terminate-idle --user app --older-than 10m            # lists, ends nothing
    $ lambda-db terminate-idle --user app --older-than 10m --yes      # ends those listed
    $ lambda-db terminate-idle --user app --older-than 5m --state idle-in-transaction
"""

from __future__ import annotations

import argparse
import datetime
import logging
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from lambda_db.cli._connection import add_connection_options, connect
from lambda_db.cli._output import format_duration, parse_duration, print_json, summary, table

__all__ = ["STATES", "Candidate", "add_parser", "find_idle", "run", "terminate"]

logger = logging.getLogger(__name__)

#: ``--state`` values and the ``pg_stat_activity.state`` values they cover.
STATES: dict[str, tuple[str, ...]] = {
    "idle": ("idle",),
    "idle-in-transaction": ("idle in transaction", "idle in transaction (aborted)"),
}

#: How long ``pg_terminate_backend`` waits for the backend to exit (PostgreSQL 14+).
WAIT_MS = 5000

# The filters, shared by the listing and the kill so both apply the same rules.
_MATCH = """
    backend_type = 'client backend'
    AND pid <> pg_backend_pid()
    AND usename = ANY(%(users)s)
    AND state = ANY(%(states)s)
    AND state_change < statement_timestamp() - make_interval(secs => %(age)s)
    AND (%(application)s::text IS NULL OR application_name = %(application)s)
    AND (%(database)s::text IS NULL OR datname = %(database)s)
"""

_LIST_SQL = f"""
SELECT pid, backend_start, usename, datname, application_name, state,
       extract(epoch FROM statement_timestamp() - state_change)::float8,
       extract(epoch FROM statement_timestamp() - backend_start)::float8,
       host(client_addr)
  FROM pg_stat_activity
 WHERE {_MATCH}
 ORDER BY state_change, pid
"""

_KILL_SQL = """
SELECT {terminate}
  FROM pg_stat_activity
 WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND {match}
"""


@dataclass(frozen=True)
class Candidate:
    """A session that matched the filters when listed."""

    pid: int
    backend_start: datetime.datetime
    user: str
    database: str | None
    application: str
    state: str
    idle_for: float
    connected_for: float
    client_addr: str | None


def _params(
    users: list[str],
    states: list[str],
    older_than: float,
    application: str | None,
    database: str | None,
) -> dict[str, Any]:
    pg_states = [s for name in states for s in STATES[name]]
    return {
        "users": users,
        "states": pg_states,
        "age": float(older_than),
        "application": application,
        "database": database,
    }


def find_idle(
    conn: psycopg2.extensions.connection,
    *,
    users: list[str],
    older_than: float,
    states: list[str] | None = None,
    application: str | None = None,
    database: str | None = None,
) -> list[Candidate]:
    """The sessions of ``users`` in ``states`` for longer than ``older_than`` seconds.

    Example::

        find_idle(conn, users=["app"], older_than=600)   # idle for over 10 minutes
    """
    if not users:
        raise ValueError("name at least one user: sessions of unnamed roles are never listed")
    params = _params(users, states or ["idle"], older_than, application, database)
    with conn.cursor() as cur:
        cur.execute(_LIST_SQL, params)
        return [
            Candidate(pid, start, u, d, a or "", s, float(i), float(c), addr)
            for pid, start, u, d, a, s, i, c, addr in cur.fetchall()
        ]


def terminate(
    conn: psycopg2.extensions.connection,
    candidates: list[Candidate],
    *,
    users: list[str],
    older_than: float,
    states: list[str] | None = None,
    application: str | None = None,
    database: str | None = None,
) -> dict[int, str]:
    """End ``candidates`` that still match; ``{pid: outcome}`` for each.

    Outcomes: ``"ended"``; ``"skipped: ..."`` when the session no longer matches (became
    active, ended or was replaced) at kill time; ``"failed: ..."`` when the server refused
    (permissions) or the backend did not exit within :data:`WAIT_MS`. ``conn`` must be
    in autocommit, so that each statement sees fresh activity statistics.
    """
    params = _params(users, states or ["idle"], older_than, application, database)
    version = int(conn.server_version)
    terminate_call = (
        f"pg_terminate_backend(pid, {WAIT_MS})"
        if version >= 140000
        else "pg_terminate_backend(pid)"
    )
    statement = _KILL_SQL.format(terminate=terminate_call, match=_MATCH)
    outcomes: dict[int, str] = {}
    for c in candidates:
        try:
            with conn.cursor() as cur:
                cur.execute(statement, {**params, "pid": c.pid, "backend_start": c.backend_start})
                row = cur.fetchone()
        except psycopg2.Error as exc:
            outcomes[c.pid] = f"failed: {(exc.pgerror or str(exc)).strip().splitlines()[0]}"
            logger.warning("could not end pid %d: %s", c.pid, outcomes[c.pid])
            continue
        if row is None:
            outcomes[c.pid] = "skipped: no longer matches (active again, or gone)"
        elif row[0]:
            outcomes[c.pid] = "ended"
            logger.info("ended pid %d (%s, %s)", c.pid, c.user, c.state)
        else:
            outcomes[c.pid] = f"failed: still running after {WAIT_MS} ms, or not a backend"
    return outcomes


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``terminate-idle`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "terminate-idle",
        help="end a named role's idle sessions (dry run unless --yes)",
        description=summary(__doc__),
    )
    parser.add_argument(
        "--user",
        action="append",
        required=True,
        metavar="ROLE",
        help="the role whose sessions to end (repeatable; required)",
    )
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="in the state for longer than this: 90, 30s, 10m, 1h",
    )
    parser.add_argument(
        "--state",
        action="append",
        choices=sorted(STATES),
        help="idle (default) and/or idle-in-transaction (repeatable)",
    )
    parser.add_argument("--application", metavar="NAME", help="only this application_name")
    parser.add_argument("--database", metavar="NAME", help="only sessions on this database")
    parser.add_argument(
        "--yes", action="store_true", help="end the sessions listed (without it: a dry run)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_connection_options(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """List, and with ``--yes`` end, the matching sessions. Exit 1 if one could not be ended."""
    states: list[str] = args.state or ["idle"]
    criteria: dict[str, Any] = {
        "users": args.user,
        "older_than": args.older_than,
        "states": states,
        "application": args.application,
        "database": args.database,
    }
    conn = connect(args, "terminate-idle")
    try:
        candidates = find_idle(conn, **criteria)
        outcomes = terminate(conn, candidates, **criteria) if args.yes else {}
    finally:
        conn.close()
    ended = sum(1 for o in outcomes.values() if o == "ended")
    failed = sum(1 for o in outcomes.values() if o.startswith("failed"))
    if args.json:
        print_json(
            {
                "dry_run": not args.yes,
                "criteria": criteria,
                "sessions": [
                    {
                        **asdict(c),
                        "backend_start": c.backend_start.isoformat(),
                        "outcome": outcomes.get(c.pid, "dry run"),
                    }
                    for c in candidates
                ],
                "ended": ended,
                "failed": failed,
            }
        )
    else:
        print(_render(candidates, outcomes, criteria, dry_run=not args.yes))
    return 1 if failed else 0


def _render(
    candidates: list[Candidate],
    outcomes: dict[int, str],
    criteria: dict[str, Any],
    *,
    dry_run: bool,
) -> str:
    who = ", ".join(criteria["users"])
    what = " or ".join(criteria["states"])
    lines = [
        f"Sessions of {who} {what} for over {format_duration(criteria['older_than'])}"
        + (f", application {criteria['application']!r}" if criteria["application"] else "")
        + (f", database {criteria['database']!r}" if criteria["database"] else "")
        + f": {len(candidates)}"
    ]
    if candidates:
        headers = ["pid", "user", "database", "application", "state", "for", "connected", "client"]
        rows: list[list[Any]] = [
            [
                c.pid,
                c.user,
                c.database,
                c.application or "-",
                c.state,
                format_duration(c.idle_for),
                format_duration(c.connected_for),
                c.client_addr or "local",
            ]
            for c in candidates
        ]
        if not dry_run:
            headers.append("outcome")
            for row, c in zip(rows, candidates, strict=True):
                row.append(outcomes[c.pid])
        lines.append(table(headers, rows, indent="  "))
    if dry_run:
        lines.append(
            "Dry run: nothing was ended."
            + (
                f" Re-run with --yes to end these {len(candidates)} session(s)."
                if candidates
                else ""
            )
        )
    else:
        ended = sum(1 for o in outcomes.values() if o == "ended")
        lines.append(f"Ended {ended} of {len(candidates)} session(s).")
    return "\n".join(lines)
