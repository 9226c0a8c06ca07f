"""What is using the server's connections, measured against every limit that applies.

The seed article's "Step 1" as a function: :func:`collect` reads ``pg_stat_activity``,
``pg_roles``, ``pg_database`` and the server settings over one connection and returns a
:class:`Report`. ``lambda-db doctor`` prints it; a scheduled Lambda function can publish
``report.limits`` as metrics. Only the standard library and psycopg2 are used, so the
module ships inside a Lambda deployment package.

The report also gives each login role in sight (the connecting one, and every one with a
client session) its effective ``statement_timeout`` and
``idle_in_transaction_session_timeout`` (:class:`RoleTimeouts`): a role whose value is 0
lets a statement, or a forgotten transaction, hold its connection and locks forever. The
effective value is PostgreSQL's order: ``ALTER ROLE r IN DATABASE d SET``, then
``ALTER ROLE r SET``, then ``ALTER DATABASE d SET`` (all in ``pg_db_role_setting``), then
the server's own value (``postgresql.conf``, the RDS parameter group).

Permissions: an ordinary role can run it. Every role sees every session's user,
database and application name, so the counts and limits are complete. The *state*
and ages of another role's sessions are visible only with ``pg_read_all_stats``
(part of ``pg_monitor``) or as superuser; without it those sessions are counted in
:attr:`Report.hidden_sessions` and show up with state ``None``.

Example::

    from lambda_db.diagnostics import collect

    report = collect(conn)
    for usage in report.limits:
        if usage.utilization >= 0.8:
            print(f"{usage.scope} {usage.name}: {usage.used}/{usage.limit}")
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg2.extensions

__all__ = [
    "ActivityGroup",
    "LimitUsage",
    "Report",
    "RoleTimeouts",
    "Session",
    "collect",
]

logger = logging.getLogger(__name__)

Scope = Literal["server", "role", "database"]

#: The seed article's alarm threshold: alert at 80 % of a limit, not at 100 %.
DEFAULT_THRESHOLD = 0.8

#: The session states a straggler can be in.
IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")

#: The timeouts every login role should have: with 0 (PostgreSQL's default, "never") a
#: stuck statement or an abandoned transaction holds its connection and locks forever.
TIMEOUT_SETTINGS = ("statement_timeout", "idle_in_transaction_session_timeout")

#: Roles AWS runs on RDS and RDS Proxy (health checks, administration): not ours to alter.
MANAGED_ROLES = frozenset({"rdsadmin", "rdsproxyadmin", "rdsrepladmin", "rdstopmgr"})

#: ``pg_settings.source`` values that are the server's own configuration; any other
#: (``user``, ``database``, ``database user``, ``client``, ``session``) is this session's.
_SERVER_SOURCES = frozenset(
    {"default", "configuration file", "command line", "environment variable", "override"}
)

_ZERO = re.compile(r"^\s*0+(\.0*)?\s*(us|ms|s|min|h|d)?\s*$")

# A client session. Rows hidden by pg_stat_activity (another role's session, no
# pg_read_all_stats) have a NULL backend_type; client backends are the hidden rows with
# a database (background workers that have one, such as parallel workers, are rare).
_CLIENT = "(backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL))"

_SERVER_SQL = """
SELECT current_setting('server_version_num')::int,
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       current_setting('idle_in_transaction_session_timeout'),
       coalesce(current_setting('idle_session_timeout', true), '0'),
       current_user,
       current_database(),
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
       pg_backend_pid(),
       statement_timestamp()
"""

_GROUPS_SQL = f"""
SELECT usename, datname, state, application_name, count(*)::int
  FROM pg_stat_activity
 WHERE {_CLIENT}
 GROUP BY usename, datname, state, application_name
 ORDER BY count(*) DESC, usename, datname, state NULLS LAST, application_name
"""

_ROLE_LIMITS_SQL = f"""
SELECT r.rolname, r.rolconnlimit,
       (SELECT count(*)::int FROM pg_stat_activity a WHERE a.usesysid = r.oid AND {_CLIENT})
  FROM pg_roles r
 WHERE r.rolconnlimit >= 0 AND r.rolcanlogin
 ORDER BY r.rolname
"""

_DATABASE_LIMITS_SQL = f"""
SELECT d.datname, d.datconnlimit,
       (SELECT count(*)::int FROM pg_stat_activity a WHERE a.datid = d.oid AND {_CLIENT})
  FROM pg_database d
 WHERE d.datconnlimit >= 0 AND d.datallowconn
 ORDER BY d.datname
"""

_ROLE_SETTINGS_SQL = """
SELECT coalesce(r.rolname, ''), coalesce(d.datname, ''), s.setconfig
  FROM pg_db_role_setting s
  LEFT JOIN pg_roles r ON r.oid = s.setrole
  LEFT JOIN pg_database d ON d.oid = s.setdatabase
"""

_LOGIN_ROLES_SQL = """
SELECT rolname FROM pg_roles
 WHERE rolcanlogin AND NOT rolsuper AND rolname = ANY(%(names)s)
"""

_SERVER_SETTINGS_SQL = """
SELECT name, setting, coalesce(unit, ''), source, boot_val
  FROM pg_settings WHERE name = ANY(%(names)s)
"""

# pg_file_settings is a superuser's only (unless EXECUTE on its function was granted).
_CAN_READ_FILE_SETTINGS_SQL = (
    "SELECT has_function_privilege('pg_show_all_file_settings()', 'EXECUTE')"
)

_FILE_SETTINGS_SQL = """
SELECT name, setting FROM pg_file_settings
 WHERE name = ANY(%(names)s) AND applied AND error IS NULL
"""

_STRAGGLERS_SQL = """
SELECT pid, usename, datname, application_name, state,
       extract(epoch FROM statement_timestamp() - state_change)::float8,
       extract(epoch FROM statement_timestamp() - backend_start)::float8,
       host(client_addr),
       backend_start
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
   AND state = ANY(%(states)s)
   AND pid <> pg_backend_pid()
   AND state_change <= statement_timestamp() - make_interval(secs => %(min_age)s)
 ORDER BY state_change, pid
"""


@dataclass(frozen=True)
class LimitUsage:
    """How much of one connection limit is in use.

    ``scope`` is ``"server"`` (``max_connections`` less the reserved slots: what ordinary
    roles can use), ``"role"`` (``rolconnlimit``) or ``"database"`` (``datconnlimit``);
    ``name`` is the role or database name (``"max_connections"`` for the server).

    >>> u = LimitUsage("role", "app", limit=10, used=8)
    >>> u.utilization, u.headroom
    (0.8, 2)
    """

    scope: Scope
    name: str
    limit: int
    used: int

    @property
    def utilization(self) -> float:
        """``used / limit``, from 0 to 1 (a limit of 0 is fully used; capped at 1).

        ``used`` exceeds ``limit`` when superusers use their reserved slots or a limit
        was lowered below the sessions already open; :attr:`headroom` shows by how much.

        >>> LimitUsage("role", "app", limit=0, used=0).utilization
        1.0
        """
        if self.limit <= 0:
            return 1.0
        return min(self.used / self.limit, 1.0)

    @property
    def headroom(self) -> int:
        """New connections still possible: ``limit - used`` (negative when over the limit).

        >>> LimitUsage("database", "app", limit=5, used=7).headroom
        -2
        """
        return self.limit - self.used


@dataclass(frozen=True)
class ActivityGroup:
    """Client sessions sharing a user, database, state and application name.

    ``state`` is ``None`` for sessions whose state this role may not see.
    """

    user: str | None
    database: str | None
    state: str | None
    application: str
    count: int


@dataclass(frozen=True)
class Session:
    """One idle (or idle-in-transaction) session, with its ages in seconds.

    ``state_age`` is how long it has been in ``state``; ``backend_age`` how long it
    has existed. ``backend_start`` identifies it together with ``pid`` (pids are reused).
    """

    pid: int
    user: str | None
    database: str | None
    application: str
    state: str
    state_age: float
    backend_age: float
    client_addr: str | None
    backend_start: datetime.datetime


@dataclass(frozen=True)
class RoleTimeouts:
    """The session timeouts a login role gets in a database, and where each comes from.

    ``settings`` maps each of :data:`TIMEOUT_SETTINGS` to its effective value as
    PostgreSQL stores it (``"5s"``, ``"5000"``: milliseconds when no unit is given, ``"0"``:
    never); ``sources`` says where it comes from: ``"role in database"``, ``"role"``,
    ``"database"``, ``"server"``, or ``"unknown"`` when the server's own value is hidden
    from this session (its own role or database overrides it, and only a superuser may
    read ``pg_file_settings``). ``unset`` lists the settings that are 0.

    >>> t = RoleTimeouts("app", "app", {"statement_timeout": "5s",
    ...     "idle_in_transaction_session_timeout": "0"},
    ...     {"statement_timeout": "role", "idle_in_transaction_session_timeout": "server"})
    >>> t.unset
    ['idle_in_transaction_session_timeout']
    """

    role: str
    database: str
    settings: dict[str, str]
    sources: dict[str, str]

    @property
    def unset(self) -> list[str]:
        """The settings whose effective value is 0 (no timeout), in :data:`TIMEOUT_SETTINGS`
        order; a setting whose value is unknown is not listed."""
        return [
            name
            for name in TIMEOUT_SETTINGS
            if self.sources.get(name, "unknown") != "unknown"
            and _ZERO.match(self.settings.get(name, ""))
        ]


@dataclass(frozen=True)
class Report:
    """Everything :func:`collect` saw, at one instant (``taken_at``, server clock).

    ``hidden_sessions`` counts other roles' client sessions whose state and ages this
    role cannot see (``GRANT pg_monitor`` shows them). ``stragglers`` are idle sessions
    older than the ``idle_age`` given to :func:`collect`, oldest first;
    ``straggler_count`` counts them all even when the list is truncated.
    ``role_timeouts`` has one entry per login role and database in sight (the connecting
    role, and every role with a client session; superusers and AWS's own roles left out).
    """

    taken_at: datetime.datetime
    server_version_num: int
    current_user: str
    current_database: str
    is_superuser: bool
    can_read_all_stats: bool
    backend_pid: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    idle_in_transaction_session_timeout: str
    idle_session_timeout: str
    groups: list[ActivityGroup] = field(default_factory=list)
    limits: list[LimitUsage] = field(default_factory=list)
    stragglers: list[Session] = field(default_factory=list)
    straggler_count: int = 0
    idle_age: float = 0.0
    hidden_sessions: int = 0
    role_timeouts: list[RoleTimeouts] = field(default_factory=list)

    @property
    def client_sessions(self) -> int:
        """Every client session on the server, this one included."""
        return sum(group.count for group in self.groups)

    def over(self, threshold: float = DEFAULT_THRESHOLD) -> list[LimitUsage]:
        """The limits whose utilization is at or above ``threshold`` (0..1).

        >>> r = Report(datetime.datetime.now(datetime.UTC), 150000, "app", "app", False,
        ...            False, 1, 100, 3, 0, "0", "0",
        ...            limits=[LimitUsage("role", "app", 10, 8), LimitUsage("role", "b", 10, 1)])
        >>> [u.name for u in r.over(0.8)]
        ['app']
        """
        return [usage for usage in self.limits if usage.utilization >= threshold]

    def without_timeouts(self) -> list[RoleTimeouts]:
        """The roles (per database) with a :data:`TIMEOUT_SETTINGS` entry of 0.

        >>> r = Report(datetime.datetime.now(datetime.UTC), 150000, "app", "app", False,
        ...            False, 1, 100, 3, 0, "0", "0", role_timeouts=[RoleTimeouts("app", "app",
        ...            {"statement_timeout": "0"}, {"statement_timeout": "server"})])
        >>> [t.role for t in r.without_timeouts()]
        ['app']
        """
        return [timeouts for timeouts in self.role_timeouts if timeouts.unset]

    def count(self, *, user: str | None = None, state: str | None = None) -> int:
        """Client sessions matching ``user`` and ``state`` (``None`` matches any)."""
        return sum(
            g.count
            for g in self.groups
            if (user is None or g.user == user) and (state is None or g.state == state)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (times as ISO 8601 strings, limits with utilization)."""
        data = asdict(self)
        data["taken_at"] = self.taken_at.isoformat()
        data["client_sessions"] = self.client_sessions
        data["limits"] = [
            {**asdict(u), "utilization": round(u.utilization, 4), "headroom": u.headroom}
            for u in self.limits
        ]
        for item in data["stragglers"]:
            item["backend_start"] = item["backend_start"].isoformat()
        data["role_timeouts"] = [
            {**asdict(timeouts), "unset": timeouts.unset} for timeouts in self.role_timeouts
        ]
        return data


def collect(
    conn: psycopg2.extensions.connection,
    *,
    idle_age: float = 60.0,
    max_stragglers: int = 50,
) -> Report:
    """Measure connection use against every limit, over ``conn`` (any role).

    ``idle_age`` (seconds) is how long a session must have been idle to be listed as a
    straggler; at most ``max_stragglers`` are listed. The statements run in one
    transaction, so the numbers are from one statistics snapshot. When ``conn`` was not
    already in a transaction, that transaction is rolled back afterwards; a caller's
    open transaction is left as it was.

    Example::

        report = collect(conn, idle_age=10 * 60.0)
        report.limits        # [LimitUsage(scope='server', name='max_connections', ...), ...]
        report.stragglers    # idle for 10 minutes or more, oldest first
    """
    started_idle = (
        not conn.autocommit
        and conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    )
    was_autocommit = conn.autocommit
    if was_autocommit:
        conn.autocommit = False  # one transaction, so one statistics snapshot
    try:
        with conn.cursor() as cur:
            report = _collect(cur, idle_age=idle_age, max_stragglers=max_stragglers)
    finally:
        if was_autocommit or started_idle:
            conn.rollback()
        if was_autocommit:
            conn.autocommit = True
    logger.debug(
        "collected %d sessions, %d limits, %d stragglers",
        report.client_sessions,
        len(report.limits),
        report.straggler_count,
    )
    return report


def _collect(cur: psycopg2.extensions.cursor, *, idle_age: float, max_stragglers: int) -> Report:
    # A snapshot taken earlier in the caller's transaction would be stale.
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute(_SERVER_SQL)
    (
        version,
        max_conn,
        su_reserved,
        reserved,
        idle_in_tx_timeout,
        idle_timeout,
        user,
        database,
        is_super,
        read_all,
        pid,
        taken_at,
    ) = _one(cur)
    cur.execute(_GROUPS_SQL)
    groups = [ActivityGroup(u, d, s, a or "", n) for u, d, s, a, n in cur.fetchall()]
    limits = [
        LimitUsage(
            "server",
            "max_connections",
            limit=max_conn - su_reserved - reserved,
            used=sum(g.count for g in groups),
        )
    ]
    cur.execute(_ROLE_LIMITS_SQL)
    limits += [LimitUsage("role", name, limit, used) for name, limit, used in cur.fetchall()]
    cur.execute(_DATABASE_LIMITS_SQL)
    limits += [LimitUsage("database", name, limit, used) for name, limit, used in cur.fetchall()]
    cur.execute(_STRAGGLERS_SQL, {"states": list(IDLE_STATES), "min_age": float(idle_age)})
    rows = cur.fetchall()
    stragglers = [
        Session(pid, u, d, a or "", s, float(sa), float(ba), addr, start)
        for pid, u, d, a, s, sa, ba, addr, start in rows[:max_stragglers]
    ]
    can_see_all = bool(is_super or read_all)
    hidden = 0 if can_see_all else sum(g.count for g in groups if g.state is None)
    pairs = {(user, database)} | {(g.user, g.database) for g in groups if g.user and g.database}
    role_timeouts = _role_timeouts(cur, pairs)
    return Report(
        taken_at=taken_at,
        server_version_num=version,
        current_user=user,
        current_database=database,
        is_superuser=bool(is_super),
        can_read_all_stats=can_see_all,
        backend_pid=pid,
        max_connections=max_conn,
        superuser_reserved_connections=su_reserved,
        reserved_connections=reserved,
        idle_in_transaction_session_timeout=idle_in_tx_timeout,
        idle_session_timeout=idle_timeout,
        groups=groups,
        limits=limits,
        stragglers=stragglers,
        straggler_count=len(rows),
        idle_age=float(idle_age),
        hidden_sessions=hidden,
        role_timeouts=role_timeouts,
    )


def _role_timeouts(
    cur: psycopg2.extensions.cursor, pairs: set[tuple[str, str]]
) -> list[RoleTimeouts]:
    """Each login role's effective timeouts in each database, in PostgreSQL's order."""
    names = list(TIMEOUT_SETTINGS)
    cur.execute(_LOGIN_ROLES_SQL, {"names": sorted({role for role, _ in pairs})})
    login = {role for (role,) in cur.fetchall()} - MANAGED_ROLES
    cur.execute(_ROLE_SETTINGS_SQL)
    configured: dict[tuple[str, str], dict[str, str]] = {}
    for role, database, config in cur.fetchall():
        entries = dict(item.split("=", 1) for item in config or [] if "=" in item)
        configured[(role, database)] = {k: v for k, v in entries.items() if k in names}
    server = _server_settings(cur, names)
    result = []
    for role, database in sorted(pair for pair in pairs if pair[0] in login):
        settings: dict[str, str] = {}
        sources: dict[str, str] = {}
        for name in names:
            for key, source in (
                ((role, database), "role in database"),
                ((role, ""), "role"),
                (("", database), "database"),
            ):
                if name in configured.get(key, {}):
                    settings[name], sources[name] = configured[key][name], source
                    break
            else:
                value = server.get(name)
                settings[name] = value if value is not None else ""
                sources[name] = "server" if value is not None else "unknown"
        result.append(RoleTimeouts(role, database, settings, sources))
    return result


def _server_settings(cur: psycopg2.extensions.cursor, names: list[str]) -> dict[str, str]:
    """The server's own value of each setting; missing where this session cannot tell."""
    cur.execute(_SERVER_SETTINGS_SQL, {"names": names})
    rows = cur.fetchall()
    values = {
        name: f"{setting}{unit}" if setting != "0" else "0"
        for name, setting, unit, source, _ in rows
        if source in _SERVER_SOURCES
    }
    hidden = {name: boot for name, _, _, source, boot in rows if source not in _SERVER_SOURCES}
    if hidden:
        cur.execute(_CAN_READ_FILE_SETTINGS_SQL)
        if _one(cur)[0]:
            cur.execute(_FILE_SETTINGS_SQL, {"names": list(hidden)})
            in_file = dict(cur.fetchall())
            for name, boot in hidden.items():
                values[name] = in_file.get(name, boot)
    return values


def _one(cur: psycopg2.extensions.cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:  # pragma: no cover - a SELECT without FROM returns one row
        raise RuntimeError("the server returned no row")
    return tuple(row)
