"""Secrets Manager and container credentials inside the caller's budget, and the negative cache.

The endpoints are real: moto's Secrets Manager over HTTP and a container credentials
server, each behind a relay that can go silent (it accepts connections and never
answers). Times are asserted with generous upper bounds (the budget plus ``SLACK``): that
a deadline held is correctness; how fast it went is for ``bench/``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lambda_db._backoff import Backoff
from lambda_db._credentials._budget import Attempts, Bounds
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db._credentials.secret import SecretProvider
from lambda_db.config import Settings
from lambda_db.errors import ConfigurationError, DatabaseUnavailableError
from tests.conftest import FakeClock

from .conftest import (
    CONTAINER_ACCESS_KEY,
    REGION,
    ContainerCredentials,
    FrozenAwsTime,
    SecretsManagerServer,
)
from .test_secrets import PASSWORD, RDS_SECRET, _provider

#: What a bounded wait may overrun its budget by (interpreter and scheduling noise).
SLACK = 0.3


def _secret_provider(server: SecretsManagerServer, name: str, **settings: Any) -> SecretProvider:
    arn = server.create(name, RDS_SECRET)
    return SecretProvider(Settings(auth_mode="secret", secret_arn=arn, **settings))


def _fails(call: Any, error: type[Exception] = DatabaseUnavailableError) -> tuple[Any, float]:
    """The error ``call()`` raised, and how long it took to raise it."""
    start = time.monotonic()
    with pytest.raises(error) as info:
        call()
    return info.value, time.monotonic() - start


# -- the arithmetic: the worst case fits ---------------------------------------------------


class _LongestBackoff(Backoff):
    """Every wait at its ceiling: the worst case of full jitter."""

    def delay(self, retry: int) -> float:
        return self.ceiling(retry)


@pytest.mark.parametrize("budget", [0.2, 0.3, 0.5, 1.0, 2.0, 2.25, 3.0, 7.5, 10.0, 60.0])
def test_every_attempt_at_its_longest_still_fits_the_budget(budget: float) -> None:
    clock = FakeClock(0.0)
    bounds = Bounds(connect=2.0, read=5.0, attempts=3, total=10.0)
    attempts = Attempts(bounds, budget, clock=clock, sleep=clock.advance, backoff=_LongestBackoff())
    for _ in attempts:
        connect, read = bounds.timeouts(attempts.remaining())
        assert connect <= bounds.connect and read <= bounds.read
        clock.advance(connect + read)  # a black hole while connecting, then a silent peer
    assert clock.now <= budget + 1e-9
    assert attempts.made <= bounds.attempts
    assert (attempts.made >= 1) is (budget >= Bounds.MIN_ATTEMPT)


def test_no_budget_means_the_providers_own_total() -> None:
    bounds = Bounds(connect=2.0, read=5.0, attempts=3, total=10.0)
    attempts = Attempts(bounds, None, clock=FakeClock(), sleep=lambda _: None)
    assert attempts.budget == 10.0
    assert bounds.timeouts(attempts.remaining()) == (2.0, 5.0)


# -- Secrets Manager -------------------------------------------------------------------------


def test_a_silent_secrets_manager_costs_one_bounded_wait_then_recovers(
    sm_server: SecretsManagerServer, short_negative_ttl: float
) -> None:
    provider = _secret_provider(sm_server, "bounded/silent")
    sm_server.silence()

    error, waited = _fails(lambda: provider.get(budget=2.0))
    assert waited < 2.0 + SLACK
    message = str(error)
    assert f"Secrets Manager at {sm_server.url}" in message
    assert "ReadTimeoutError" in message and "(budget 2.00 s)" in message
    assert sm_server.accepted == provider.fetches >= 1  # one connection per attempt

    # Remembered: no new connection, at once, and saying so; refresh=True is no way round.
    accepted = sm_server.accepted
    for refresh in (False, True):
        again, waited = _fails(lambda r=refresh: provider.get(refresh=r, budget=2.0))
        assert waited < 0.1
        assert "[remembered: this failed" in str(again) and sm_server.url in str(again)
        assert again.__cause__ is error
    assert sm_server.accepted == accepted

    sm_server.heal()
    time.sleep(short_negative_ttl)
    assert provider.get(budget=2.0).password == PASSWORD
    assert sm_server.accepted == accepted + 1


def test_without_a_budget_the_providers_default_bounds_the_fetch(
    sm_server: SecretsManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SecretProvider, "DEFAULT_BUDGET", 1.0)
    provider = _secret_provider(sm_server, "bounded/default")
    sm_server.silence()
    error, waited = _fails(provider.get)
    assert waited < 1.0 + SLACK
    assert "(budget 1.00 s)" in str(error)


def test_a_failed_max_age_refresh_serves_the_previous_value_with_a_warning(
    sm_server: SecretsManagerServer, short_negative_ttl: float, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _secret_provider(sm_server, "bounded/stale", secret_max_age=0.5)
    first = provider.get(budget=2.0)
    sm_server.silence()
    time.sleep(0.5)  # the value is now older than secret_max_age

    caplog.set_level(logging.WARNING, logger="lambda_db")
    start = time.monotonic()
    assert provider.get(budget=2.0) == first
    # The refresh may use only part of the budget: the rest is left for connecting.
    assert time.monotonic() - start < 2.0 * SecretProvider.STALE_BUDGET_SHARE + SLACK
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "using the value read" in text and provider._arn in text and PASSWORD not in text

    # Within the negative period: the previous value again, without a connection.
    accepted = sm_server.accepted
    assert provider.get(budget=2.0) == first
    assert sm_server.accepted == accepted
    # After a refused password the previous value is never the answer.
    with pytest.raises(DatabaseUnavailableError, match="remembered"):
        provider.get(refresh=True, budget=2.0)


def test_a_failure_is_remembered_for_negative_ttl_on_the_providers_clock(
    aws_env: dict[str, str], clock: FakeClock
) -> None:
    # Nothing listens on port 9 of loopback: refused at once, a transient failure.
    client = boto3.client(
        "secretsmanager", region_name=REGION, endpoint_url="http://127.0.0.1:9",
        config=Config(connect_timeout=1, retries={"total_max_attempts": 1}),
    )  # fmt: skip
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:db-AbCdEf"
    provider = SecretProvider(
        Settings(auth_mode="secret", secret_arn=arn), client=client, clock=clock,
        sleep=clock.advance,
    )  # fmt: skip
    with pytest.raises(DatabaseUnavailableError):
        provider.get(budget=2.0)
    made = provider.fetches
    assert made == SecretProvider.MAX_ATTEMPTS

    clock.advance(SecretProvider.NEGATIVE_TTL - 0.01)
    with pytest.raises(DatabaseUnavailableError, match=r"failed \d+\.\d s ago; no new attempt"):
        provider.get(budget=2.0)
    assert provider.fetches == made
    clock.advance(0.01)
    with pytest.raises(DatabaseUnavailableError) as info:
        provider.get(budget=2.0)
    assert "remembered" not in str(info.value)
    assert provider.fetches == 2 * made

    provider.invalidate()  # a SnapStart restore forgets the failure too
    with pytest.raises(DatabaseUnavailableError) as info:
        provider.get(budget=2.0)
    assert "remembered" not in str(info.value)


def test_a_permanent_failure_is_raised_even_with_a_previous_value(
    secretsmanager: Any, clock: FakeClock
) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET), clock, secret_max_age=300.0)
    provider.get()
    secretsmanager.delete_secret(SecretId=provider._arn, ForceDeleteWithoutRecovery=True)
    clock.advance(300.0)
    with pytest.raises(ConfigurationError, match="ResourceNotFoundException"):
        provider.get()
    calls = secretsmanager.get_secret_value_calls
    with pytest.raises(ConfigurationError, match="remembered") as info:
        provider.get()
    assert info.value.variable == "DB_SECRET_ARN"
    assert secretsmanager.get_secret_value_calls == calls


def test_too_little_budget_is_no_attempt_and_nothing_remembered(secretsmanager: Any) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET))
    with pytest.raises(DatabaseUnavailableError, match="no time left to read the secret"):
        provider.get(budget=0.1)
    assert secretsmanager.get_secret_value_calls == 0
    assert provider.get(budget=2.0).password == PASSWORD


# -- the container credentials endpoint (iam mode under SnapStart) --------------------------


def _iam_settings() -> Settings:
    return Settings(host="proxy.example.com", dbname="app", user="app_user", auth_mode="iam",
                    region=REGION)  # fmt: skip


def test_a_silent_container_endpoint_costs_one_bounded_wait_then_recovers(
    container_credentials: ContainerCredentials,
    short_negative_ttl: float,
    aws_time: FrozenAwsTime,
) -> None:
    provider = IamTokenProvider(_iam_settings())
    container_credentials.silence()

    error, waited = _fails(lambda: provider.get(budget=2.0))
    assert waited < 2.0 + SLACK
    message = str(error)
    assert f"the container credentials endpoint {container_credentials.url}" in message
    assert "(budget 2.00 s)" in message
    accepted = container_credentials.accepted
    assert 1 <= accepted <= IamTokenProvider.MAX_ATTEMPTS

    again, waited = _fails(lambda: provider.get(budget=2.0))
    assert waited < 0.1 and "[remembered: this failed" in str(again)
    assert container_credentials.accepted == accepted

    container_credentials.heal()
    time.sleep(short_negative_ttl)
    token = str(provider.get(budget=2.0).password)
    assert f"X-Amz-Credential={CONTAINER_ACCESS_KEY}%2F" in token
    # The credentials are kept until botocore's refresh window: a new token, no request.
    accepted = container_credentials.accepted
    provider.get(refresh=True, budget=2.0)
    assert container_credentials.accepted == accepted
    assert provider.minted == 2
