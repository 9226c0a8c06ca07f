"""Schema setup: a CloudFormation custom resource that creates the items table and the
application role the other functions log in as.

* ``Create`` and ``Update`` run the migration, as the master user (the only code that
  does): idempotent statements in one transaction under an advisory lock, so running it
  twice, or twice at once, is safe. It creates the ``items`` table and lambda_db's
  idempotency table (``lambda_db.idempotency.ensure_schema``), both owned by the master
  user, and the application role named by the ``AppUser`` property:

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

  A role of that name that already exists is reused, unless it has more than ``LOGIN``
  (superuser, ``CREATEROLE``, ``CREATEDB``, ``BYPASSRLS``, replication): then the
  migration fails rather than hand the API a powerful role.
* ``Delete`` succeeds without touching the database: the data and the role outlive the
  stack (the instance's final snapshot keeps them), and the database may already be
  unreachable.

CloudFormation waits for an answer PUT to the pre-signed ``ResponseURL`` (up to
``ServiceTimeout``), so one is always sent, SUCCESS or FAILED, whatever happens. The
function's ``DB_DEADLINE_MARGIN`` (template.yaml) keeps 30 seconds of its timeout free
for that: lambda_db's connection retries stop there.

Like the other functions it logs in to RDS Proxy with an IAM token: it never reads the
database secret (the proxy does). ``APP_DB_PASSWORD`` exists for local runs only: when
set, the application role also gets that password (sent as a SCRAM verifier computed
here, never as clear text), so that functions run on a laptop can log in as it.
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
#: The RDS role whose members log in with IAM tokens (absent outside RDS).
RDS_IAM_ROLE = "rds_iam"
#: The privileges the application role gets on the tables, and nothing else.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
TABLES = ("items", DEFAULT_TABLE)
#: Role names the template allows (AppDbUser's AllowedPattern).
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
_ROLE = """
SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication
  FROM pg_roles WHERE rolname = %s
"""


class PropertyError(ValueError):
    """A custom resource property is missing or out of range (the message names it)."""


@dataclass(frozen=True)
class AppRole:
    """The application role the migration creates, from the resource's properties.

    >>> AppRole.from_properties({"AppUser": "app_user", "StatementTimeoutMs": "5000",
    ...     "LockTimeoutMs": 2000, "IdleInTransactionTimeoutMs": "10000"}).defaults
    {'statement_timeout': 5000, 'lock_timeout': 2000, 'idle_in_transaction_session_timeout': 10000}
    """

    name: str
    statement_timeout_ms: int
    lock_timeout_ms: int
    idle_in_transaction_timeout_ms: int

    @classmethod
    def from_properties(cls, properties: dict[str, Any]) -> AppRole:
        """Read and check ``AppUser`` and the three timeouts (CloudFormation sends strings)."""
        name = properties.get("AppUser")
        if not isinstance(name, str) or not ROLE_NAME.match(name):
            raise PropertyError(
                f"AppUser must be a role name matching {ROLE_NAME.pattern}, got {name!r}"
            )
        return cls(
            name=name,
            statement_timeout_ms=_milliseconds(properties, "StatementTimeoutMs"),
            lock_timeout_ms=_milliseconds(properties, "LockTimeoutMs"),
            idle_in_transaction_timeout_ms=_milliseconds(properties, "IdleInTransactionTimeoutMs"),
        )

    @property
    def defaults(self) -> dict[str, int]:
        """The role defaults, setting name to milliseconds."""
        return {
            "statement_timeout": self.statement_timeout_ms,
            "lock_timeout": self.lock_timeout_ms,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_timeout_ms,
        }


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
            role = migrate(event, context)
            data["AppUser"] = role.name
            logger.info(
                "schema is up to date",
                extra={"request_type": request_type, "app_user": role.name, **role.defaults},
            )
        elif request_type == "Delete":
            logger.info("delete: the table, its data and the application role are kept")
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
def migrate(event: dict[str, Any], context: LambdaContext) -> AppRole:
    """Run the idempotent migration in the invocation's transaction; return the role."""
    # Checked before the first use of the connection.
    role = AppRole.from_properties(event.get("ResourceProperties") or {})
    conn = lambda_db.get_connection()
    with conn.cursor() as cur:
        cur.execute(_LOCK)
        cur.execute(_TABLE)
        ensure_schema(conn)
        _ensure_role(cur, role)
        _grant(cur, role)
        password = os.environ.get(APP_PASSWORD_VARIABLE, "")
        if password:
            verifier = psycopg2.extensions.encrypt_password(password, role.name, conn)
            cur.execute(
                sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role.name)),
                (verifier,),
            )
            logger.warning(
                "%s is set: the application role also accepts a password (local runs only)",
                APP_PASSWORD_VARIABLE,
            )
    return role


def _ensure_role(cur: psycopg2.extensions.cursor, role: AppRole) -> None:
    cur.execute(_ROLE, (role.name,))
    row = cur.fetchone()
    if row is None:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role.name)))
    elif row[0]:
        raise PermissionError(
            f"role {role.name!r} already exists with more than LOGIN (superuser, CREATEROLE, "
            "CREATEDB, BYPASSRLS or REPLICATION): the API will not run as it; choose another "
            "AppDbUser or strip those attributes"
        )
    cur.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role.name)))
    for setting, milliseconds in role.defaults.items():
        cur.execute(
            sql.SQL("ALTER ROLE {} SET {} = %s").format(
                sql.Identifier(role.name), sql.Identifier(setting)
            ),
            (milliseconds,),
        )
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (RDS_IAM_ROLE,))
    if cur.fetchone() is not None:
        cur.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(RDS_IAM_ROLE), sql.Identifier(role.name)
            )
        )
    else:
        logger.warning("no %s role (not RDS): %s cannot log in with IAM", RDS_IAM_ROLE, role.name)


def _grant(cur: psycopg2.extensions.cursor, role: AppRole) -> None:
    app = sql.Identifier(role.name)
    cur.execute("SELECT current_database()")
    (database_name,) = cur.fetchone() or ("",)
    database = sql.Identifier(database_name)
    cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, app))
    # Temporary tables pin RDS Proxy sessions; the owner (the master user) keeps TEMP.
    cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(app))
    privileges = sql.SQL(", ").join(sql.SQL(p) for p in TABLE_PRIVILEGES)
    for table in TABLES:
        name = sql.Identifier(table)
        cur.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(name, app))
        cur.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(privileges, name, app))


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
