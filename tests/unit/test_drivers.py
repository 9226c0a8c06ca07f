"""The driver seam without a server: choosing a driver, importing it lazily, and what
psycopg 3's exceptions mean to the classifier."""

from __future__ import annotations

import pytest

import lambda_db
from lambda_db._classify import Failure, classify, classify_connect_error, disconnected
from lambda_db._driver import get_driver
from lambda_db.config import DRIVERS
from tests.support.interpreter import fresh_python

psycopg = pytest.importorskip("psycopg")

from lambda_db._psycopg import parse_isolation_level  # noqa: E402 (needs psycopg)


def test_import_lambda_db_loads_no_psycopg_3() -> None:
    """``import lambda_db``, a Database and Settings naming psycopg: nothing imports it yet."""
    code = (
        "import sys, lambda_db\n"
        "s = lambda_db.Settings(host='h', dbname='d', user='u', password='p', driver='psycopg')\n"
        "db = lambda_db.Database(s)\n"
        "before = sorted(m for m in sys.modules if m.startswith('psycopg') and m != 'psycopg2'"
        " and not m.startswith('psycopg2.'))\n"
        "db.driver\n"  # the first use: now it is imported
        "print(before, 'psycopg' in sys.modules)\n"
    )
    assert fresh_python(code) == "[] True"


def test_db_driver_chooses_psycopg_3() -> None:
    settings = lambda_db.Settings.from_env(
        {"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PASSWORD": "p", "DB_DRIVER": "psycopg"}
    )
    assert settings.driver == "psycopg"
    assert lambda_db.Database(settings).driver is get_driver("psycopg")
    assert DRIVERS == ("psycopg2", "psycopg")


@pytest.mark.parametrize("name", ["psycopg3", "asyncpg", ""])
def test_an_unknown_driver_names_the_variable(name: str) -> None:
    env = {"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PASSWORD": "p", "DB_DRIVER": name}
    if not name:  # empty: the default
        assert lambda_db.Settings.from_env(env).driver == "psycopg2"
        return
    with pytest.raises(lambda_db.ConfigurationError) as info:
        lambda_db.Settings.from_env(env)
    assert info.value.variable == "DB_DRIVER"
    assert "psycopg2, psycopg" in str(info.value)


# -- what psycopg 3's exceptions mean ------------------------------------------------------

DRIVER = get_driver("psycopg")


def connect_error(message: str) -> Exception:
    """What psycopg 3's connection generator raises: libpq's text after its own prefix."""
    error: Exception = psycopg.OperationalError(
        f'connection failed: connection to server at "db" (10.0.0.1), port 5432 failed: {message}'
    )
    return error


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('FATAL:  too many connections for role "myapp"', Failure.CONNECTION_LIMIT),
        ("FATAL:  the database system is starting up", Failure.UNAVAILABLE),
        ("Connection refused\n\tIs the server running on that host?", Failure.UNAVAILABLE),
        ('FATAL:  password authentication failed for user "app"', Failure.AUTHENTICATION),
        ('FATAL:  database "nope" does not exist', Failure.CONFIGURATION),
        ("SSL error: certificate verify failed", Failure.CONFIGURATION),
    ],
)
def test_connect_failures_classify_as_psycopg2s_do(message: str, kind: Failure) -> None:
    assert classify_connect_error(connect_error(message), DRIVER) is kind


def test_the_exact_connect_timeout_is_a_wait_and_retry() -> None:
    from lambda_db._psycopg import ConnectTimeout

    exc = ConnectTimeout("timeout expired: no answer before the connect attempt's deadline")
    assert classify_connect_error(exc, DRIVER) is Failure.UNAVAILABLE


def test_a_closed_connection_is_a_disconnect() -> None:
    """psycopg 3 says so with an OperationalError (psycopg2 with an InterfaceError)."""
    info = DRIVER.error_info(psycopg.OperationalError("the connection is closed"))
    assert info is not None and info.closed
    assert disconnected(info)
    # A closed cursor is the handler's mistake on a healthy connection, not a lost link.
    cursor_closed = DRIVER.error_info(psycopg.InterfaceError("the cursor is closed"))
    assert cursor_closed is not None and not cursor_closed.closed
    assert not disconnected(cursor_closed)


def test_sqlstates_come_from_the_server_error_class() -> None:
    info = DRIVER.error_info(psycopg.errors.AdminShutdown("terminating connection"))
    assert info is not None
    assert info.sqlstate == "57P01"
    assert disconnected(info)
    conflict = DRIVER.error_info(psycopg.errors.SerializationFailure("could not serialize"))
    assert conflict is not None and conflict.sqlstate == "40001"
    assert classify(conflict) is Failure.OTHER
    assert DRIVER.error_info(ValueError("not a driver error")) is None


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("SERIALIZABLE", "SERIALIZABLE"),
        ("repeatable read", "REPEATABLE_READ"),
        (" Read Committed ", "READ_COMMITTED"),
        ("READ UNCOMMITTED", "READ_UNCOMMITTED"),
    ],
)
def test_isolation_levels_are_named_as_for_psycopg2(name: str, level: str) -> None:
    parsed = parse_isolation_level(name)
    assert parsed is not None and parsed.name == level


def test_an_unknown_isolation_level_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="use one of READ UNCOMMITTED, READ COMMITTED"):
        parse_isolation_level("SNAPSHOT")
