"""Error classification: SQLSTATE first, the server's wordings as a fallback."""

from __future__ import annotations

import psycopg2
import pytest

from lambda_db._classify import Failure, classify_connect_error, is_disconnect


def connect_error(message: str) -> psycopg2.OperationalError:
    """What psycopg2.connect raises: an OperationalError with no pgcode."""
    return psycopg2.OperationalError(
        f'connection to server at "db" (10.0.0.1), port 5432 failed: {message}'
    )


@pytest.mark.parametrize(
    "message",
    [
        'FATAL:  too many connections for role "myapp"',
        'FATAL:  too many connections for database "app"',
        "FATAL:  sorry, too many clients already",
        "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
        "FATAL:  remaining connection slots are reserved for roles with privileges of the"
        ' "pg_use_reserved_connections" role',
    ],
)
def test_every_53300_wording_is_a_connection_limit(message: str) -> None:
    assert classify_connect_error(connect_error(message)) is Failure.CONNECTION_LIMIT


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("FATAL:  the database system is starting up", Failure.UNAVAILABLE),
        ("FATAL:  the database system is shutting down", Failure.UNAVAILABLE),
        ("Connection refused\n\tIs the server running on that host?", Failure.UNAVAILABLE),
        ("timeout expired", Failure.UNAVAILABLE),
        ("server closed the connection unexpectedly", Failure.UNAVAILABLE),
        ('FATAL:  password authentication failed for user "app"', Failure.AUTHENTICATION),
        ('FATAL:  PAM authentication failed for user "app"', Failure.AUTHENTICATION),
        ('FATAL:  database "nope" does not exist', Failure.CONFIGURATION),
        ('FATAL:  role "nope" does not exist', Failure.CONFIGURATION),
        ("FATAL:  IAM authentication is allowed only with SSL connections", Failure.CONFIGURATION),
        ("certificate verify failed", Failure.CONFIGURATION),
        ('could not translate host name "nope" to address', Failure.CONFIGURATION),
    ],
)
def test_connect_wordings(message: str, kind: Failure) -> None:
    assert classify_connect_error(connect_error(message)) is kind


def test_non_database_errors_are_other() -> None:
    assert classify_connect_error(ValueError("x")) is Failure.OTHER
    assert classify_connect_error(psycopg2.ProgrammingError("syntax")) is Failure.OTHER


def test_disconnect_needs_a_verdict() -> None:
    assert is_disconnect(psycopg2.InterfaceError("connection already closed"))
    assert is_disconnect(psycopg2.OperationalError("server closed the connection unexpectedly"))
    assert not is_disconnect(psycopg2.errors.UniqueViolation("duplicate key"))
    assert not is_disconnect(ValueError("handler bug"))
