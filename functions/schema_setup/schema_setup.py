"""Schema setup: a CloudFormation custom resource that creates the items table and the
two roles the other functions log in as.

* ``Create`` and ``Update`` run the migration, as the master user (the only code that
  does): idempotent statements in one transaction under an advisory lock, so running it
  twice, or twice at once, is safe. It creates the ``items`` table and lambda_db's
  idempotency table (``lambda_db.idempotency.ensure_schema``), both owned by the master
  user, the application role named by the ``AppUser`` property, and the connection
  report's role named by ``ReportUser``.

  The application role (the items, stock and item import functions):

  - ``LOGIN``, no other attribute; ``GRANT rds_iam`` where that role exists (RDS), so it
    logs in with IAM tokens only; ``CONNECT`` on this database, ``USAGE`` on ``public``
    and ``SELECT, INSERT, UPDATE, DELETE`` on ``items`` and on the idempotency table (the
    items API's ``Idempotency-Key`` and the item import's per-message keys): no DDL, not
    the owner;
  - no temporary tables (``TEMPORARY`` revoked from ``PUBLIC`` on this database): they
    would pin RDS Proxy sessions;
  - role defaults ``statement_timeout``, ``lock_timeout`` and
    ``idle_in_transaction_session_timeout`` from the ``StatementTimeoutMs``,
    ``LockTimeoutMs`` and ``IdleInTransactionTimeoutMs`` properties. The server applies
    them to every session of the role as it logs in, so the functions never send ``SET``
    (which would pin their RDS Proxy sessions). A changed value applies to new
    connections; the proxy's pooled ones keep the old value until it replaces them.

  The report role (the connection report): ``LOGIN``, ``rds_iam`` where it exists,
  ``CONNECT`` on this database and membership in ``pg_monitor``, which lets it see the
  state and age of every role's sessions in ``pg_stat_activity`` (an ordinary role sees
  its own only, and would count another role's idle-in-transaction sessions as 0) and
  read the server's settings; no privilege on any table, so it reads statistics and
  never data. It gets the same role defaults.

  A role of either name that already exists is reused only if it is no more than the
  migration makes it: the migration fails, rather than hand a function a powerful role,
  when the role has an attribute beyond ``LOGIN`` (superuser, ``CREATEROLE``,
  ``CREATEDB``, ``BYPASSRLS``, replication), is a member of any role it is not given
  here (it would inherit that role's privileges: ``GRANT app_admin TO app_user`` would
  let the API drop the table), owns any object, holds a privilege on any object other
  than those granted on here, or holds on those (this database, ``public``, the tables
  and their columns) a privilege of another kind than granted here or any privilege
  ``WITH GRANT OPTION``: ``CREATE`` or ``TEMPORARY`` on the database, ``CREATE`` on
  ``public``, the report role's anything but ``CONNECT``. The check reads the role's own
  access list entries (not ``PUBLIC``'s) before the migration grants anything, so a
  role the migration made passes it on every later deploy. It refuses too what the
  migration's own ``REVOKE ALL`` on the tables would take away (``TRUNCATE``, say):
  that ``REVOKE`` removes the master user's grants only, never another grantor's. On
  PostgreSQL 16+ the master user (``CREATEROLE``) may alter only the roles it has the
  ``ADMIN OPTION`` on: a role someone else created fails the migration, saying so.

  What reaches the roles otherwise is checked after every grant, in the same
  transaction: the migration first takes its own grants on the tables and their
  sequences away from ``PUBLIC``, ``pg_monitor`` and ``rds_iam`` (default privileges would
  give them new tables), then asks the server (``has_*_privilege``) what each role can do
  on this database, ``public``, the tables, their columns and sequences, and fails when it
  is more than the grants above (``USAGE`` on ``public``, which ``PUBLIC`` has by default,
  allowed to both), naming the privilege and whether ``PUBLIC`` or a membership gives it.
* ``Delete`` succeeds without touching the database: the data and the roles outlive the
  stack (the instance's final snapshot keeps them), and the database may already be
  unreachable.

CloudFormation waits for an answer PUT to the pre-signed ``ResponseURL`` (up to
``ServiceTimeout``), so one is always sent, SUCCESS or FAILED, whatever happens. The
function's ``DB_DEADLINE_MARGIN`` (template.yaml) keeps 30 seconds of its timeout free
for that: lambda_db's connection retries stop there.

Like the other functions it logs in to RDS Proxy with an IAM token: it never reads the
database secret (the proxy does). ``APP_DB_PASSWORD`` and ``REPORT_DB_PASSWORD`` exist
for local runs only: when set, the application (report) role also gets that password
(sent as a SCRAM verifier computed here, never as clear text), so that functions run on a
laptop can log in as it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import psycopg2.errors
import psycopg2.extensions
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from psycopg2 import sql

import lambda_db
from lambda_db import with_connection
from lambda_db.idempotency import DEFAULT_TABLE, ensure_schema

logger = Logger()

PHYSICAL_RESOURCE_ID = "lambda-db-schema"
RESPONSE_TIMEOUT = 10.0
MAX_REASON_LENGTH = 1000
#: Local runs only: a password for the application role (empty in AWS).
APP_PASSWORD_VARIABLE = "APP_DB_PASSWORD"  # noqa: S105 - a variable name
#: Local runs only: a password for the report role (empty in AWS).
REPORT_PASSWORD_VARIABLE = "REPORT_DB_PASSWORD"  # noqa: S105 - a variable name
#: The RDS role whose members log in with IAM tokens (absent outside RDS).
RDS_IAM_ROLE = "rds_iam"
#: PostgreSQL's predefined role that reads every session's statistics and the settings.
MONITOR_ROLE = "pg_monitor"
#: The privileges the application role gets on the tables, and nothing else.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
TABLES = ("items", DEFAULT_TABLE)
#: Role names the template allows (AppDbUser's and ReportDbUser's AllowedPattern).
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: Bounds of the timeout properties, in milliseconds (0 would mean "no timeout").
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 24 * 60 * 60 * 1000

_LOCK = "SELECT pg_advisory_xact_lock(hashtext('lambda-db schema'))"
_TABLE = """
CREATE TABLE IF NOT EXISTS items (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    quantity    integer NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
)
"""
# What an existing role is beyond what the migration makes it: its attributes beyond
# LOGIN, the roles it is a member of, how many objects it owns (pg_shdepend's "o" entries
# cover every database and the shared objects), and the objects it holds a privilege on
# ("a" entries) other than the ones the migration grants on: this database, schema
# public and the tables named (_SURPLUS checks those).
_ROLE = """
WITH db AS (SELECT oid FROM pg_database WHERE datname = current_database()),
granted_on (classid, objid) AS (
    SELECT 'pg_database'::regclass::oid, oid FROM db
    UNION ALL
    SELECT 'pg_namespace'::regclass::oid, oid FROM pg_namespace WHERE nspname = 'public'
    UNION ALL
    SELECT 'pg_class'::regclass::oid, oid FROM pg_class
     WHERE oid = ANY(ARRAY(SELECT to_regclass(t)::oid FROM unnest(%(tables)s::text[]) AS t))
)
SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolbypassrls OR r.rolreplication,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
              WHERE m.member = r.oid ORDER BY 1),
       (SELECT count(*)::int FROM pg_shdepend d
         WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'o'),
       ARRAY(SELECT CASE WHEN d.dbid IN (0, (SELECT oid FROM db))
                         THEN coalesce(pg_describe_object(d.classid, d.objid, d.objsubid),
                                       'an object')
                         ELSE 'an object in another database' END
               FROM pg_shdepend d
              WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid
                AND d.deptype = 'a'
                AND NOT (d.dbid IN (0, (SELECT oid FROM db))
                         AND (d.classid, d.objid) IN (SELECT classid, objid FROM granted_on))
              ORDER BY 1)
  FROM pg_roles r
 WHERE r.rolname = %(role)s
"""
# The role's own entries in the access lists of the objects the migration grants on
# (this database, schema public, the tables named and their columns), before it grants
# anything: each privilege of a kind the role may not hold there, or held WITH GRANT
# OPTION, as (object, privilege, grantor). PUBLIC's entries are not the role's.
_SURPLUS = """
WITH grantee AS (SELECT oid FROM pg_roles WHERE rolname = %(role)s),
tables AS (SELECT to_regclass(t)::oid AS oid FROM unnest(%(tables)s::text[]) AS t),
held (rank, classid, objid, objsubid, allowed, acl) AS (
    SELECT 1, 'pg_database'::regclass::oid, oid, 0, %(on_database)s::text[], datacl
      FROM pg_database WHERE datname = current_database()
    UNION ALL
    SELECT 2, 'pg_namespace'::regclass::oid, oid, 0, %(on_schema)s::text[], nspacl
      FROM pg_namespace WHERE nspname = 'public'
    UNION ALL
    SELECT 3, 'pg_class'::regclass::oid, oid, 0, %(on_tables)s::text[], relacl
      FROM pg_class WHERE oid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 4, 'pg_class'::regclass::oid, attrelid, attnum, %(on_tables)s::text[], attacl
      FROM pg_attribute
     WHERE attrelid IN (SELECT oid FROM tables) AND attnum > 0 AND NOT attisdropped
)
SELECT described, privilege, grantor FROM (
    SELECT DISTINCT h.rank, pg_describe_object(h.classid, h.objid, h.objsubid) AS described,
           a.privilege_type || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
               AS privilege,
           pg_get_userbyid(a.grantor)::text AS grantor
      FROM held h CROSS JOIN LATERAL aclexplode(h.acl) AS a
     WHERE a.grantee = (SELECT oid FROM grantee)
       AND (a.is_grantable OR NOT a.privilege_type = ANY(h.allowed))
) AS surplus
 ORDER BY rank, described, privilege, grantor
"""
# What a role can do, after every grant, on the objects the migration grants on and the
# tables' own sequences (items' identity): each privilege of %(checked)s, per kind of object
# ("database", "schema", "table", "column", "sequence"), that has_*_privilege says the role
# has (so through PUBLIC, a membership or its own entries alike) and may not, as (object,
# privilege, NULL when PUBLIC's entries give it, else the roles it is a member of that have
# it). The privilege names differ by kind and server version, hence the list from the
# caller.
_EFFECTIVE = """
WITH grantee AS (SELECT oid FROM pg_roles WHERE rolname = %(role)s),
tables AS (SELECT to_regclass(t)::oid AS oid FROM unnest(%(tables)s::text[]) AS t),
objects (rank, kind, classid, objid, objsubid, acl) AS (
    SELECT 1, 'database', 'pg_database'::regclass::oid, oid, 0,
           coalesce(datacl, acldefault('d', datdba))
      FROM pg_database WHERE datname = current_database()
    UNION ALL
    SELECT 2, 'schema', 'pg_namespace'::regclass::oid, oid, 0,
           coalesce(nspacl, acldefault('n', nspowner))
      FROM pg_namespace WHERE nspname = 'public'
    UNION ALL
    SELECT 3, 'table', 'pg_class'::regclass::oid, oid, 0,
           coalesce(relacl, acldefault('r', relowner))
      FROM pg_class WHERE oid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 4, 'column', 'pg_class'::regclass::oid, a.attrelid, a.attnum,
           coalesce(a.attacl, '{}') || coalesce(c.relacl, acldefault('r', c.relowner))
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
     WHERE a.attrelid IN (SELECT oid FROM tables) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 5, 'sequence', 'pg_class'::regclass::oid, s.oid, 0,
           coalesce(s.relacl, acldefault('s', s.relowner))
      FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid IN (SELECT oid FROM tables) AND d.deptype IN ('a', 'i')
),
checks AS (
    SELECT o.*, p.privilege
      FROM objects o
      JOIN jsonb_each(%(checked)s::jsonb) AS k (kind, privileges) ON k.kind = o.kind
     CROSS JOIN LATERAL jsonb_array_elements_text(k.privileges) AS p (privilege)
),
members_of AS (
    SELECT r.oid, r.rolname::text AS rolname FROM pg_roles r, grantee g
     WHERE r.oid <> g.oid AND pg_has_role(g.oid, r.oid, 'USAGE')
)
SELECT pg_describe_object(c.classid, c.objid, c.objsubid), c.privilege,
       CASE WHEN EXISTS (
                SELECT FROM aclexplode(c.acl) AS a
                 WHERE a.grantee = 0 AND a.privilege_type = split_part(c.privilege, ' ', 1)
                   AND (a.is_grantable OR c.privilege NOT LIKE '%% WITH GRANT OPTION'))
            THEN NULL
            ELSE ARRAY(
                SELECT m.rolname FROM members_of m
                 WHERE CASE c.kind
                       WHEN 'database' THEN has_database_privilege(m.oid, c.objid, c.privilege)
                       WHEN 'schema' THEN has_schema_privilege(m.oid, c.objid, c.privilege)
                       WHEN 'table' THEN has_table_privilege(m.oid, c.objid, c.privilege)
                       WHEN 'column' THEN has_column_privilege(m.oid, c.objid,
                                                               c.objsubid::int2, c.privilege)
                       ELSE has_sequence_privilege(m.oid, c.objid, c.privilege) END
                 ORDER BY 1)
       END
  FROM checks c, grantee g
 WHERE CASE c.kind
       WHEN 'database' THEN has_database_privilege(g.oid, c.objid, c.privilege)
       WHEN 'schema' THEN has_schema_privilege(g.oid, c.objid, c.privilege)
       WHEN 'table' THEN has_table_privilege(g.oid, c.objid, c.privilege)
       WHEN 'column' THEN has_column_privilege(g.oid, c.objid, c.objsubid::int2, c.privilege)
       ELSE has_sequence_privilege(g.oid, c.objid, c.privilege) END
 ORDER BY c.rank, 1, 2
"""
#: Every privilege each kind of object has (MAINTAIN on tables from PostgreSQL 17).
_PRIVILEGES = {
    "database": ("CREATE", "CONNECT", "TEMPORARY"),
    "schema": ("CREATE", "USAGE"),
    "table": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"),
    "column": ("SELECT", "INSERT", "UPDATE", "REFERENCES"),
    "sequence": ("USAGE", "SELECT", "UPDATE"),
}
_MAINTAIN_SINCE = 170000
#: How many surplus privileges a refusal names (the reason CloudFormation shows is short).
MAX_NAMED = 8


class PropertyError(ValueError):
    """A custom resource property is missing or out of range (the message names it)."""


@dataclass(frozen=True)
class Roles:
    """The two roles the migration creates, from the resource's properties.

    >>> roles = Roles.from_properties({"AppUser": "app_user", "ReportUser": "app_report",
    ...     "StatementTimeoutMs": "5000", "LockTimeoutMs": 2000,
    ...     "IdleInTransactionTimeoutMs": "10000"})
    >>> roles.app, roles.report, roles.defaults["lock_timeout"]
    ('app_user', 'app_report', 2000)
    """

    #: The application role: DML on the tables.
    app: str
    #: The connection report's role: pg_monitor, no table.
    report: str
    statement_timeout_ms: int
    lock_timeout_ms: int
    idle_in_transaction_timeout_ms: int

    @classmethod
    def from_properties(cls, properties: dict[str, Any]) -> Roles:
        """Read and check ``AppUser``, ``ReportUser`` and the three timeouts
        (CloudFormation sends strings)."""
        app = _role_name(properties, "AppUser")
        report = _role_name(properties, "ReportUser")
        if app == report:
            raise PropertyError(f"AppUser and ReportUser must differ, both are {app!r}")
        return cls(
            app=app,
            report=report,
            statement_timeout_ms=_milliseconds(properties, "StatementTimeoutMs"),
            lock_timeout_ms=_milliseconds(properties, "LockTimeoutMs"),
            idle_in_transaction_timeout_ms=_milliseconds(properties, "IdleInTransactionTimeoutMs"),
        )

    @property
    def defaults(self) -> dict[str, int]:
        """The role defaults of both roles, setting name to milliseconds."""
        return {
            "statement_timeout": self.statement_timeout_ms,
            "lock_timeout": self.lock_timeout_ms,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_timeout_ms,
        }


@dataclass(frozen=True)
class _Grants:
    """What the migration gives one role: memberships, and the privileges it may hold on
    this database, on schema public and on the tables (and their columns), none of them
    WITH GRANT OPTION."""

    member_of: tuple[str, ...]
    on_database: tuple[str, ...] = ("CONNECT",)
    on_schema: tuple[str, ...] = ()
    on_tables: tuple[str, ...] = ()

    def effective(self, server_version: int) -> dict[str, list[str]]:
        """The privileges, by kind of object, the role may not end up with by any means
        (its own entries, ``PUBLIC``'s, a membership's): every other kind than granted,
        and every one ``WITH GRANT OPTION``. ``USAGE`` on ``public`` is allowed to both
        roles: ``PUBLIC`` has it by default, and it lets a role look up names only (each
        object has its own privileges, checked here for the tables).

        >>> _REPORT_GRANTS.effective(160000)["database"]
        ['CREATE', 'TEMPORARY', 'CREATE WITH GRANT OPTION', 'CONNECT WITH GRANT OPTION', \
'TEMPORARY WITH GRANT OPTION']
        >>> _APP_GRANTS.effective(170000)["table"][:3]
        ['TRUNCATE', 'REFERENCES', 'TRIGGER']
        """
        allowed = {
            "database": self.on_database,
            "schema": (*self.on_schema, "USAGE"),
            "table": self.on_tables,
            "column": self.on_tables,
            "sequence": (),
        }
        checked = {}
        for kind, privileges in _PRIVILEGES.items():
            every = privileges
            if kind == "table" and server_version >= _MAINTAIN_SINCE:
                every = (*privileges, "MAINTAIN")
            checked[kind] = [p for p in every if p not in allowed[kind]] + [
                f"{p} WITH GRANT OPTION" for p in every
            ]
        return checked


#: The application role: DML on the tables, through schema public.
_APP_GRANTS = _Grants(member_of=(RDS_IAM_ROLE,), on_schema=("USAGE",), on_tables=TABLE_PRIVILEGES)
#: The report role: statistics and settings, no table.
_REPORT_GRANTS = _Grants(member_of=(RDS_IAM_ROLE, MONITOR_ROLE))


def _role_name(properties: dict[str, Any], key: str) -> str:
    name = properties.get(key)
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise PropertyError(f"{key} must be a role name matching {ROLE_NAME.pattern}, got {name!r}")
    return name


def _milliseconds(properties: dict[str, Any], key: str) -> int:
    value = properties.get(key)
    try:
        number = int(str(value), 10)
    except ValueError:
        raise PropertyError(
            f"{key} must be a whole number of milliseconds, got {value!r}"
        ) from None
    if not MIN_TIMEOUT_MS <= number <= MAX_TIMEOUT_MS:
        raise PropertyError(
            f"{key} must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS} ms, got {number}"
        )
    return number


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Handle one custom resource request; return the answer sent to CloudFormation."""
    request_type = event.get("RequestType")
    status, reason, data = "SUCCESS", "", {"Table": "items"}
    try:
        if request_type in ("Create", "Update"):
            roles = migrate(event, context)
            data.update(AppUser=roles.app, ReportUser=roles.report)
            logger.info(
                "schema is up to date",
                extra={
                    "request_type": request_type,
                    "app_user": roles.app,
                    "report_user": roles.report,
                    **roles.defaults,
                },
            )
        elif request_type == "Delete":
            logger.info("delete: the table, its data and the roles are kept")
        else:
            status, reason = "FAILED", f"unknown RequestType {request_type!r}"
    except Exception as exc:
        logger.exception("schema setup failed")
        status = "FAILED"
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]
    answer = _answer(event, context, status, reason, data)
    _send(event.get("ResponseURL"), answer)
    return answer


@with_connection
def migrate(event: dict[str, Any], context: LambdaContext) -> Roles:
    """Run the idempotent migration in the invocation's transaction; return the roles."""
    # Checked before the first use of the connection.
    roles = Roles.from_properties(event.get("ResourceProperties") or {})
    conn = lambda_db.get_connection()
    with conn.cursor() as cur:
        cur.execute(_LOCK)
        cur.execute(_TABLE)
        ensure_schema(conn)
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (RDS_IAM_ROLE,))
        on_rds = cur.fetchone() is not None
        for name, grants, variable in (
            (roles.app, _APP_GRANTS, APP_PASSWORD_VARIABLE),
            (roles.report, _REPORT_GRANTS, REPORT_PASSWORD_VARIABLE),
        ):
            _ensure_role(cur, name, grants, roles.defaults)
            password = os.environ.get(variable, "")
            if password:
                verifier = psycopg2.extensions.encrypt_password(password, name, conn)
                cur.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(name)),
                    (verifier,),
                )
            _grant_login(cur, name, on_rds=on_rds, password=bool(password), variable=variable)
        _grant_tables(cur, roles.app)
        _grant_monitoring(cur, roles.report)
        _revoke_shared(cur, on_rds=on_rds)
        _refuse_effective(cur, ((roles.app, _APP_GRANTS), (roles.report, _REPORT_GRANTS)))
    return roles


def _ensure_role(
    cur: psycopg2.extensions.cursor, name: str, grants: _Grants, defaults: dict[str, int]
) -> None:
    """Create ``name`` (LOGIN only), or check that the existing role is no more than the
    migration makes it (before the migration grants it anything); then set its role
    defaults."""
    cur.execute(_ROLE, {"role": name, "tables": list(TABLES)})
    row = cur.fetchone()
    if row is None:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    else:
        cur.execute(
            _SURPLUS,
            {
                "role": name,
                "tables": list(TABLES),
                "on_database": list(grants.on_database),
                "on_schema": list(grants.on_schema),
                "on_tables": list(grants.on_tables),
            },
        )
        _refuse_more_than_granted(name, grants, *row, surplus=cur.fetchall())
    try:
        cur.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege as exc:
        # PostgreSQL 16+: a CREATEROLE role alters only the roles it has ADMIN OPTION on
        # (those it created, or was granted so).
        raise PermissionError(
            f"role {name!r} was created by another role, and the master user may not alter "
            f"it: on PostgreSQL 16+ that needs the ADMIN OPTION on it (GRANT {name} TO "
            f"{cur.connection.info.user} WITH ADMIN OPTION, by its creator or a superuser), "
            "or choose another name"
        ) from exc
    for setting, milliseconds in defaults.items():
        cur.execute(
            sql.SQL("ALTER ROLE {} SET {} = %s").format(
                sql.Identifier(name), sql.Identifier(setting)
            ),
            (milliseconds,),
        )


def _refuse_more_than_granted(
    name: str,
    grants: _Grants,
    attributes: bool,
    member_of: list[str],
    owned: int,
    privileges: list[str],
    *,
    surplus: list[tuple[str, str, str]],
) -> None:
    """:class:`PermissionError` naming what the existing role ``name`` has beyond the
    migration's grants; the whole migration then rolls back.

    ``surplus`` is what it holds beyond them on the objects the migration grants on, as
    (object, privilege, grantor); a privilege two roles granted is named once:

    >>> _refuse_more_than_granted("app_user", _APP_GRANTS, False, [], 0, [], surplus=[
    ...     ("database app", "CREATE", "app_admin"),
    ...     ("database app", "TEMPORARY", "app_admin"),
    ...     ("table items", "TRUNCATE", "app_admin"), ("table items", "TRUNCATE", "ops")])
    Traceback (most recent call last):
    ...
    PermissionError: role 'app_user' already exists with more than LOGIN and this \
migration's grants: CREATE (granted by app_admin), TEMPORARY (granted by app_admin) on \
database app; TRUNCATE (granted by app_admin, ops) on table items (REVOKE each FROM \
app_user as the role that granted it; REVOKE GRANT OPTION FOR an allowed one keeps the \
privilege). No function will log in as it: choose another name, or take those away
    """
    found = []
    if attributes:
        found.append(
            "an attribute beyond LOGIN (superuser, CREATEROLE, CREATEDB, BYPASSRLS or REPLICATION)"
        )
    other_roles = [role for role in member_of if role not in grants.member_of]
    if other_roles:
        found.append(
            f"membership in {', '.join(other_roles)} (whose privileges it would use; "
            f"REVOKE {', '.join(other_roles)} FROM {name})"
        )
    if owned:
        found.append(f"{owned} object(s) it owns (REASSIGN OWNED BY {name} TO ...)")
    if surplus:
        by_object: dict[str, dict[str, list[str]]] = {}
        for described, privilege, grantor in surplus:
            by_object.setdefault(described, {}).setdefault(privilege, []).append(grantor)
        named = [
            ", ".join(f"{privilege} (granted by {', '.join(by)})" for privilege, by in held.items())
            + f" on {described}"
            for described, held in by_object.items()
        ]
        found.append(
            f"{_listed(named, '; ', MAX_NAMED)} (REVOKE each FROM {name} as the role that "
            "granted it; REVOKE GRANT OPTION FOR an allowed one keeps the privilege)"
        )
    if privileges:
        found.append(f"privileges on {_listed(privileges, ', ', 5)}")
    if found:
        raise PermissionError(
            f"role {name!r} already exists with more than LOGIN and this migration's grants: "
            f"{'; '.join(found)}. No function will log in as it: choose another name, or "
            "take those away"
        )


def _listed(items: list[str], separator: str, limit: int) -> str:
    """The first ``limit`` of ``items`` joined, and ``...`` when there are more.

    >>> _listed(["a", "b", "c"], ", ", 2)
    'a, b, ...'
    """
    more = ["..."] if len(items) > limit else []
    return separator.join(items[:limit] + more)


def _grant_login(
    cur: psycopg2.extensions.cursor, name: str, *, on_rds: bool, password: bool, variable: str
) -> None:
    """``GRANT rds_iam`` (IAM tokens only) on RDS; say how the role logs in elsewhere."""
    if on_rds:
        cur.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(RDS_IAM_ROLE), sql.Identifier(name))
        )
        if password:
            logger.warning(
                "%s is set on RDS: unset it (%s logs in with IAM tokens only)", variable, name
            )
    elif password:
        # A local run (lambda-db dev, the tests): the password is how it logs in.
        logger.info(
            "%s logs in with the password from %s (a local run: no %s role outside RDS)",
            name,
            variable,
            RDS_IAM_ROLE,
        )
    else:
        logger.warning(
            "%s cannot log in: no %s role (not RDS) for IAM tokens, and no %s",
            name,
            RDS_IAM_ROLE,
            variable,
        )


def _grant_tables(cur: psycopg2.extensions.cursor, name: str) -> None:
    app = sql.Identifier(name)
    cur.execute("SELECT current_database()")
    (database_name,) = cur.fetchone() or ("",)
    database = sql.Identifier(database_name)
    cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, app))
    # Temporary tables pin RDS Proxy sessions; the owner (the master user) keeps TEMP.
    cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(app))
    privileges = sql.SQL(", ").join(sql.SQL(p) for p in TABLE_PRIVILEGES)
    for table in TABLES:
        table_name = sql.Identifier(table)
        cur.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(table_name, app))
        cur.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(privileges, table_name, app))


def _grant_monitoring(cur: psycopg2.extensions.cursor, name: str) -> None:
    report = sql.Identifier(name)
    cur.execute("SELECT current_database()")
    (database_name,) = cur.fetchone() or ("",)
    cur.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database_name), report)
    )
    try:
        cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(MONITOR_ROLE), report))
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise PermissionError(
            f"the master user may not GRANT {MONITOR_ROLE} TO {name}: on RDS its "
            "rds_superuser membership allows it; elsewhere, a superuser must GRANT "
            f"{MONITOR_ROLE} TO it WITH ADMIN OPTION"
        ) from exc


def _revoke_shared(cur: psycopg2.extensions.cursor, *, on_rds: bool) -> None:
    """Take the master user's grants on the tables and their sequences away from the
    roles the functions' roles share (``PUBLIC``, ``pg_monitor``, ``rds_iam``): default
    privileges (``ALTER DEFAULT PRIVILEGES ... TO PUBLIC``) would otherwise reach them.
    Another grantor's are left, and :func:`_refuse_effective` refuses them."""
    shared = [sql.SQL("PUBLIC"), sql.Identifier(MONITOR_ROLE)]
    if on_rds:
        shared.append(sql.Identifier(RDS_IAM_ROLE))
    cur.execute(
        "SELECT n.nspname::text, s.relname::text FROM pg_depend d"
        "  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
        "  JOIN pg_namespace n ON n.oid = s.relnamespace"
        " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
        "   AND d.deptype IN ('a', 'i')"
        "   AND d.refobjid = ANY(ARRAY(SELECT to_regclass(t)::oid FROM unnest(%s::text[]) t))"
        " ORDER BY 1, 2",
        (list(TABLES),),
    )
    objects = [(sql.SQL("TABLE"), sql.Identifier(table)) for table in TABLES]
    objects += [(sql.SQL("SEQUENCE"), sql.Identifier(*name)) for name in cur.fetchall()]
    for kind, name in objects:
        cur.execute(
            sql.SQL("REVOKE ALL ON {} {} FROM {}").format(kind, name, sql.SQL(", ").join(shared))
        )


def _refuse_effective(
    cur: psycopg2.extensions.cursor, roles: tuple[tuple[str, _Grants], ...]
) -> None:
    """After every grant: :class:`PermissionError` (the migration rolls back) naming each
    privilege a role has on this database, ``public``, the tables, their columns or
    sequences beyond the migration's grants, and where it comes from (``PUBLIC``'s
    entries, or the roles it is a member of that have it)."""
    version = cur.connection.server_version
    found = []
    for name, grants in roles:
        cur.execute(
            _EFFECTIVE,
            {
                "role": name,
                "tables": list(TABLES),
                "checked": json.dumps(grants.effective(version)),
            },
        )
        for described, privilege, through in cur.fetchall():
            if through is None:
                source = "PUBLIC"
            elif through:
                source = f"membership in {', '.join(through)}"
            else:
                source = "its own grants"
            found.append(f"role {name!r} has {privilege} on {described} through {source}")
    if found:
        raise PermissionError(
            "beyond this migration's grants, from grants it does not take away: "
            f"{_listed(found, '; ', MAX_NAMED)}. "
            "REVOKE each from PUBLIC or that role, as the role that granted it (the "
            "object's access list shows who); nothing was changed"
        )


def _answer(
    event: dict[str, Any],
    context: LambdaContext,
    status: str,
    reason: str,
    data: dict[str, str],
) -> dict[str, Any]:
    if status == "FAILED":
        reason = f"{reason} (log stream {context.log_stream_name})"
    return {
        "Status": status,
        "Reason": reason,
        # Stable across updates: a new id would make CloudFormation delete the old one.
        "PhysicalResourceId": event.get("PhysicalResourceId") or PHYSICAL_RESOURCE_ID,
        "StackId": event.get("StackId", ""),
        "RequestId": event.get("RequestId", ""),
        "LogicalResourceId": event.get("LogicalResourceId", ""),
        "NoEcho": False,
        "Data": data,
    }


def _send(url: Any, answer: dict[str, Any]) -> bool:
    """PUT the answer to CloudFormation's pre-signed URL; False (logged) when it fails."""
    if not isinstance(url, str) or not _allowed_url(url):
        logger.error("no usable ResponseURL in the event; CloudFormation gets no answer")
        return False
    body = json.dumps(answer).encode()
    # The URL is pre-signed for an empty Content-Type.
    headers = {"Content-Type": "", "Content-Length": str(len(body))}
    # The scheme is checked above: https, or http to a loopback host.
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT) as response:  # noqa: S310
            logger.info(
                "answered CloudFormation",
                extra={"status": answer["Status"], "http": response.status},
            )
    except (urllib.error.URLError, OSError):
        logger.exception("could not answer CloudFormation")
        return False
    return True


def _allowed_url(url: str) -> bool:
    """https anywhere; plain http only to a loopback host (local tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False
