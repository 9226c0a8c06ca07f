"""Secrets Manager provider: parsing, a monotonic cache, errors that name the ARN only."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest

from lambda_db._credentials.secret import SecretProvider
from lambda_db.config import Settings
from lambda_db.errors import ConfigurationError, DatabaseUnavailableError
from tests.conftest import FakeClock

from .conftest import REGION

PASSWORD = "s3cr3t-Value-that-must-never-show"
RDS_SECRET = {
    "username": "app_user",
    "password": PASSWORD,
    "engine": "postgres",
    "host": "db.cluster-abc.eu-west-1.rds.amazonaws.com",
    "port": 5432,
    "dbname": "app",
}


def _provider(sm: Any, value: str, clock: FakeClock | None = None, **settings: Any) -> Any:
    arn = sm.create_secret(Name="app/db", SecretString=value)["ARN"]
    s = Settings(auth_mode="secret", secret_arn=arn, **settings)
    return SecretProvider(s, client=sm, clock=clock or FakeClock())


def _text(exc: BaseException) -> str:
    """Everything a traceback would print, the whole chain included."""
    return "".join(traceback.format_exception(exc))


def test_reads_an_rds_secret(secretsmanager: Any) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET))
    creds = provider.get()
    assert (creds.user, creds.password) == ("app_user", PASSWORD)
    assert (creds.host, creds.port, creds.dbname) == (RDS_SECRET["host"], 5432, "app")
    assert provider.fetches == secretsmanager.get_secret_value_calls == 1


def test_port_may_be_a_string_and_host_may_be_absent(secretsmanager: Any) -> None:
    value = {"username": "u", "password": "p", "port": "6432"}
    creds = _provider(secretsmanager, json.dumps(value)).get()
    assert (creds.host, creds.port, creds.dbname) == (None, 6432, None)


def test_cached_for_max_age_then_refetched(secretsmanager: Any, clock: FakeClock) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET), clock, secret_max_age=300.0)
    provider.get()
    clock.advance(299.9)
    provider.get()
    assert secretsmanager.get_secret_value_calls == 1
    clock.advance(0.1)
    provider.get()
    assert secretsmanager.get_secret_value_calls == 2


def test_refresh_bypasses_the_cache(secretsmanager: Any) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET))
    provider.get()
    secretsmanager.put_secret_value(
        SecretId=provider._arn, SecretString=json.dumps({**RDS_SECRET, "password": "rotated"})
    )
    assert provider.get().password == PASSWORD  # cached
    assert provider.get(refresh=True).password == "rotated"
    assert provider.fetches == secretsmanager.get_secret_value_calls == 2


def test_max_age_zero_fetches_every_time(secretsmanager: Any) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET), secret_max_age=0.0)
    provider.get()
    provider.get()
    assert secretsmanager.get_secret_value_calls == 2


def test_invalidate_forgets_the_value(secretsmanager: Any) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET))
    provider.get()
    provider.invalidate()
    provider.get()
    assert secretsmanager.get_secret_value_calls == 2


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (f"username=app_user password={PASSWORD}", "is not JSON"),
        (json.dumps([PASSWORD]), "not an object"),
        (json.dumps({"username": "app_user"}), "has no password"),
        (json.dumps({"password": PASSWORD}), "has no username"),
        (json.dumps({**RDS_SECRET, "port": PASSWORD}), "port that is not an integer"),
    ],
)
def test_malformed_secret_names_the_arn_not_the_value(
    secretsmanager: Any, value: str, match: str
) -> None:
    provider = _provider(secretsmanager, value)
    with pytest.raises(ConfigurationError, match=match) as info:
        provider.get()
    assert info.value.variable == "DB_SECRET_ARN"
    assert provider._arn in str(info.value)
    assert PASSWORD not in _text(info.value)


def test_missing_secret_is_a_configuration_error(secretsmanager: Any) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-AbCdEf"
    provider = SecretProvider(Settings(auth_mode="secret", secret_arn=arn), client=secretsmanager)
    with pytest.raises(ConfigurationError, match="ResourceNotFoundException") as info:
        provider.get()
    assert arn in str(info.value)
    assert "secretsmanager:GetSecretValue" in str(info.value)


def test_unreachable_secrets_manager_says_nat_or_endpoint(aws_env: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    # Nothing listens on port 9 of loopback: a refused connection, as fast as it gets.
    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        config=Config(connect_timeout=1, retries={"total_max_attempts": 1}),
    )
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:db-AbCdEf"
    provider = SecretProvider(Settings(auth_mode="secret", secret_arn=arn), client=client)
    with pytest.raises(DatabaseUnavailableError, match="NAT gateway or a Secrets Manager"):
        provider.get()


def test_region_comes_from_the_arn(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    arn = "arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:db-AbCdEf"
    provider = SecretProvider(Settings(auth_mode="secret", secret_arn=arn))
    client = provider._aws.client("secretsmanager", provider._region(), (1.0, 1.0))
    assert client.meta.region_name == "ap-southeast-2"
    assert client.meta.endpoint_url == "https://secretsmanager.ap-southeast-2.amazonaws.com"


def test_no_region_at_all_is_a_configuration_error(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    provider = SecretProvider(Settings(auth_mode="secret", secret_arn="app/db"))
    with pytest.raises(ConfigurationError, match="no region"):
        provider.get()


def test_describe_says_what_to_check(secretsmanager: Any) -> None:
    provider = _provider(secretsmanager, json.dumps(RDS_SECRET))
    provider.get()
    text = provider.describe()
    assert provider._arn in text and "'app_user'" in text
    for hint in ("rotation", "username", "secretsmanager:GetSecretValue", "kms:Decrypt"):
        assert hint in text
    assert PASSWORD not in text + repr(provider) + repr(provider.get())
