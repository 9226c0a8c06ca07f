"""How every command that talks to a server connects: ``--dsn`` or the library's ``DB_*``.

Without ``--dsn`` the command reads the same environment as a function using lambda-db
(:meth:`lambda_db.Settings.from_env`: ``DB_HOST``, ``DB_AUTH_MODE`` = password, secret
or iam, ``DB_SSLMODE`` ...) and connects through :class:`lambda_db.Database`, so Secrets
Manager and IAM tokens work as they do in Lambda. ``--dsn`` takes a libpq connection
string or URI. Either way the session is named ``lambda-db <command>`` in
``pg_stat_activity``, runs in autocommit, and nothing printed contains the password:
the DSN is never echoed, only host, port, database and user from the live connection.

Example::

    $ DB_HOST=db.example.com DB_NAME=app DB_USER=app DB_PASSWORD=... lambda-db doctor
    $ lambda-db doctor --dsn "host=127.0.0.1 dbname=app user=app"   # password from PGPASSWORD
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import psycopg2
import psycopg2.extensions

from lambda_db.config import Settings
from lambda_db.database import Database
from lambda_db.errors import ConnectionLimitError, LambdaDbError

__all__ = ["CommandError", "UsageError", "add_connection_options", "connect", "describe"]

logger = logging.getLogger(__name__)


class CommandError(Exception):
    """A failure the command reports as one line on stderr, exiting with status 2."""


class UsageError(CommandError):
    """Arguments that argparse accepted but the command cannot use (exit status 2, as
    argparse's own usage errors)."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--dsn``; without it the ``DB_*`` variables of the library apply."""
    group = parser.add_argument_group(
        "connection",
        "Without --dsn: the library's DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, "
        "DB_AUTH_MODE (password|secret|iam), DB_SECRET_ARN, DB_SSLMODE, DB_SSLROOTCERT, "
        "DB_REGION variables.",
    )
    group.add_argument(
        "--dsn",
        metavar="DSN",
        help="libpq connection string or URI (never printed; prefer PGPASSWORD or "
        "~/.pgpass to a password in it)",
    )


def connect(args: argparse.Namespace, command: str) -> psycopg2.extensions.connection:
    """An autocommit connection named ``lambda-db <command>``, or :class:`CommandError`."""
    application_name = f"lambda-db {command}"
    try:
        if args.dsn:
            conn: psycopg2.extensions.connection = psycopg2.connect(
                args.dsn, application_name=application_name
            )
        else:
            # The operations tool speaks psycopg2 whatever DB_DRIVER the functions use.
            settings = Settings.from_env().replace(
                application_name=application_name, driver="psycopg2"
            )
            conn = Database(settings).get_connection()
    except psycopg2.ProgrammingError as exc:
        # A DSN that libpq cannot parse: its message quotes the DSN's text, which may
        # hold the password, so it is not shown.
        raise CommandError(
            "cannot connect: --dsn is not a valid libpq connection string or URI "
            "(the text is not shown, as it may hold a password)"
        ) from exc
    except psycopg2.Error as exc:
        # A refused or failed connection: libpq names host and port, never the password.
        raise CommandError(f"cannot connect: {_one_line(exc)}") from exc
    except ConnectionLimitError as exc:
        raise CommandError(
            f"cannot connect: {exc}. A full role or server refuses this command too: run it "
            "as another role (one granted pg_monitor sees everything) with DB_USER or --dsn"
        ) from exc
    except LambdaDbError as exc:
        raise CommandError(f"cannot connect: {exc}") from exc
    conn.autocommit = True
    logger.info("connected: %s", describe(conn))
    return conn


def describe(conn: psycopg2.extensions.connection) -> str:
    """``user@host:port/dbname`` from the live connection (no password, no DSN).

    >>> class Info:
    ...     user, host, port, dbname = "app", "127.0.0.1", 5432, "app"
    >>> class Conn:
    ...     info = Info()
    >>> describe(Conn())  # type: ignore[arg-type]
    'app@127.0.0.1:5432/app'
    """
    info: Any = conn.info
    return f"{info.user}@{info.host}:{info.port}/{info.dbname}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
