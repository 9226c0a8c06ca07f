"""The connect loop's arithmetic on a fake clock (database behaviour is proven in functional/)."""

from __future__ import annotations

import random
from typing import Any

import psycopg2
import pytest

from lambda_db import ConfigurationError, ConnectionLimitError, DatabaseUnavailableError, Settings
from lambda_db._backoff import Backoff
from lambda_db._connect import connect_kwargs, connect_with_retry
from lambda_db._credentials import Credentials, PasswordProvider
from lambda_db._psycopg2 import Psycopg2Driver
from tests.conftest import FakeClock

SETTINGS = Settings(host="127.0.0.1", dbname="app", user="app", password="pw")
FULL = (
    'connection to server at "127.0.0.1", port 5432 failed: '
    'FATAL:  too many connections for role "app"'
)


class Refusing(Psycopg2Driver):
    """psycopg2's driver whose ``connect`` fails with ``messages`` (the last one repeating,
    ``failures`` times in all), then returns a sentinel."""

    def __init__(self, *messages: str, failures: int = 10**6) -> None:
        super().__init__()
        self.messages = messages
        self.failures = failures
        self.calls: list[dict[str, Any]] = []

    def connect(self, params: dict[str, Any], *, timeout: float) -> Any:
        self.calls.append(params)
        if len(self.calls) <= self.failures:
            message = self.messages[min(len(self.calls), len(self.messages)) - 1]
            raise psycopg2.OperationalError(message)
        return "connection"


def run(connect: Refusing, clock: FakeClock, budget: float) -> Any:
    def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return connect_with_retry(
        SETTINGS,
        PasswordProvider(SETTINGS),
        connect,
        deadline=clock() + budget,
        clock=clock,
        sleep=sleep,
        backoff=Backoff(rng=random.Random(3)),
    )


def test_no_attempt_starts_after_the_deadline(clock: FakeClock) -> None:
    connect = Refusing(FULL)
    start = clock()
    with pytest.raises(ConnectionLimitError) as info:
        run(connect, clock, budget=5.0)
    assert clock() - start < 5.0
    assert info.value.attempts == len(connect.calls) > 5
    assert info.value.budget == 5.0


def test_a_full_server_is_named_even_when_the_last_attempt_timed_out(clock: FakeClock) -> None:
    """The last attempt, clamped to what was left, may time out: the server was still full."""
    connect = Refusing(FULL, FULL, "timeout expired")
    with pytest.raises(ConnectionLimitError) as info:
        run(connect, clock, budget=5.0)
    assert "connection limit was reached on 2 of" in str(info.value)
    assert "timeout expired" in str(info.value)


def test_unreachable_without_a_full_server_is_not_a_limit(clock: FakeClock) -> None:
    connect = Refusing("timeout expired")
    with pytest.raises(DatabaseUnavailableError) as info:
        run(connect, clock, budget=5.0)
    assert not isinstance(info.value, ConnectionLimitError)


def test_success_after_failures_reports_retries(clock: FakeClock) -> None:
    connect = Refusing(FULL, failures=3)
    result = run(connect, clock, budget=30.0)
    assert result.connection == "connection"
    assert (result.attempts, result.retries) == (4, 3)


def test_an_empty_budget_makes_no_attempt(clock: FakeClock) -> None:
    connect = Refusing(FULL)
    with pytest.raises(DatabaseUnavailableError) as info:
        run(connect, clock, budget=0.0)
    assert connect.calls == []
    assert info.value.attempts == 0
    assert "no time left" in str(info.value)


def test_a_small_budget_still_makes_one_attempt(clock: FakeClock) -> None:
    connect = Refusing(FULL)
    with pytest.raises(ConnectionLimitError):
        run(connect, clock, budget=0.001)
    assert len(connect.calls) == 1


def test_nothing_in_the_startup_packet_sets_a_session_setting() -> None:
    kwargs = connect_kwargs(SETTINGS, Credentials("app", "pw"), remaining=5)
    assert kwargs["options"] == ""  # overrides PGOPTIONS: RDS Proxy rejects startup options
    assert kwargs["application_name"] == "lambda-db"


def test_connect_timeout_never_exceeds_the_remaining_budget(clock: FakeClock) -> None:
    kwargs = connect_kwargs(SETTINGS, Credentials("app", "pw"), remaining=3.2)
    assert kwargs["connect_timeout"] == 4  # libpq's whole seconds, rounded up
    assert connect_kwargs(SETTINGS, Credentials("app", "pw"), remaining=0.1)["connect_timeout"] == 2
    assert connect_kwargs(SETTINGS, Credentials("app", "pw"), remaining=60)["connect_timeout"] == 5


def test_secret_supplied_location_is_used_when_env_is_silent() -> None:
    settings = Settings(user="app", auth_mode="secret", secret_arn="arn:x")
    creds = Credentials("u", "pw", host="db.internal", port=6543, dbname="orders")
    kwargs = connect_kwargs(settings, creds, remaining=5)
    assert (kwargs["host"], kwargs["port"], kwargs["dbname"]) == ("db.internal", 6543, "orders")
    assert kwargs["sslmode"] == "verify-full"
    assert kwargs["sslrootcert"].endswith(".pem")
    env_wins = settings.replace(host="proxy.example.com", port=5432, dbname="app")
    kwargs = connect_kwargs(env_wins, creds, remaining=5)
    assert (kwargs["host"], kwargs["port"], kwargs["dbname"]) == ("proxy.example.com", 5432, "app")


def test_missing_host_names_the_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect_kwargs(Settings(dbname="app", user="app"), Credentials("app", "pw"), remaining=5)
    assert info.value.variable == "DB_HOST"
