"""Settings: defaults pinned, the environment parsed, bad values named."""

from __future__ import annotations

import pytest

from lambda_db import ConfigurationError, Settings
from lambda_db.config import is_loopback

BASE = {"DB_HOST": "db.example.com", "DB_NAME": "app", "DB_USER": "app", "DB_PASSWORD": "s3cr3t!"}


def test_defaults_are_pinned() -> None:
    s = Settings.from_env(BASE)
    assert (s.port, s.auth_mode, s.application_name) == (5432, "password", "lambda-db")
    assert s.connect_timeout == 5.0
    assert s.connect_budget == 10.0
    assert s.idle_ping_after == 120.0  # well under RDS Proxy's 1800 s IdleClientTimeout
    assert s.max_age == 1800.0
    assert s.deadline_margin is None  # auto: 1 s, at most a quarter of the time left
    assert (s.margin_for(None), s.margin_for(10.0), s.margin_for(1.0)) == (1.0, 1.0, 0.25)
    assert s.secret_max_age == 300.0
    assert s.allow_insecure_transport is False
    assert s.local_statement_timeout is False  # pin-free by default
    assert s.driver == "psycopg2"
    assert s.effective_sslmode() == "verify-full"


def test_every_variable_is_read() -> None:
    env = {
        **BASE,
        "DB_PORT": "6432",
        "DB_AUTH_MODE": "IAM",
        "DB_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:x",
        "DB_SSLMODE": "require",
        "DB_SSLROOTCERT": "/opt/ca.pem",
        "DB_REGION": "eu-west-1",
        "AWS_REGION": "us-east-1",
        "DB_APPLICATION_NAME": "orders",
        "DB_CONNECT_TIMEOUT": "3",
        "DB_CONNECT_BUDGET": "4.5",
        "DB_IDLE_PING_AFTER": "60",
        "DB_MAX_AGE": "0",
        "DB_DEADLINE_MARGIN": "0.5",
        "DB_SECRET_MAX_AGE": "60",
        "DB_ALLOW_INSECURE_TRANSPORT": "true",
        "DB_LOCAL_STATEMENT_TIMEOUT": "on",
        "DB_DRIVER": "psycopg2",
    }
    s = Settings.from_env(env)
    assert s.port == 6432
    assert s.auth_mode == "iam"
    assert s.region == "eu-west-1"
    assert (s.sslmode, s.sslrootcert, s.application_name) == ("require", "/opt/ca.pem", "orders")
    assert (s.connect_timeout, s.connect_budget, s.idle_ping_after) == (3.0, 4.5, 60.0)
    assert (s.max_age, s.deadline_margin) == (0.0, 0.5)
    assert s.secret_max_age == 60.0
    assert s.allow_insecure_transport is True
    assert s.local_statement_timeout is True


@pytest.mark.parametrize("variable", ["DB_STATEMENT_GUARD", "DB_IDLE_IN_TRANSACTION_TIMEOUT"])
def test_removed_variables_are_ignored_with_a_warning(
    variable: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = Settings.from_env({**BASE, variable: "30"})
    assert s == Settings.from_env(BASE)
    assert any(variable in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_application_name_follows_the_function() -> None:
    s = Settings.from_env({**BASE, "AWS_LAMBDA_FUNCTION_NAME": "items"})
    assert s.application_name == "lambda-db:items"


def test_region_falls_back_to_aws_region() -> None:
    assert Settings.from_env({**BASE, "AWS_REGION": "ap-south-1"}).region == "ap-south-1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_PORT", "five"),
        ("DB_PORT", "70000"),
        ("DB_AUTH_MODE", "kerberos"),
        ("DB_SSLMODE", "sometimes"),
        ("DB_CONNECT_TIMEOUT", "soon"),
        ("DB_CONNECT_TIMEOUT", "0"),
        ("DB_MAX_AGE", "-1"),
        ("DB_ALLOW_INSECURE_TRANSPORT", "maybe"),
        ("DB_LOCAL_STATEMENT_TIMEOUT", "sometimes"),
        ("DB_DRIVER", "asyncpg"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({**BASE, variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value)


@pytest.mark.parametrize(
    ("mode", "missing", "extra"),
    [
        ("password", "DB_HOST", {}),
        ("password", "DB_NAME", {}),
        ("password", "DB_USER", {}),
        ("password", "DB_PASSWORD", {}),
        ("iam", "DB_HOST", {}),
        ("secret", "DB_SECRET_ARN", {}),
    ],
)
def test_validate_names_the_missing_variable(
    mode: str, missing: str, extra: dict[str, str]
) -> None:
    env = {**BASE, "DB_AUTH_MODE": mode, **extra}
    env.pop(missing, None)
    settings = Settings.from_env(env)  # reading never fails on absence...
    with pytest.raises(ConfigurationError) as info:
        settings.validate()  # ...first use does
    assert info.value.variable == missing


def test_secret_mode_needs_only_the_arn() -> None:
    Settings.from_env({"DB_AUTH_MODE": "secret", "DB_SECRET_ARN": "arn:x"}).validate()


def test_password_never_in_repr() -> None:
    s = Settings.from_env(BASE)
    assert "s3cr3t!" not in repr(s)


def test_settings_are_immutable_values() -> None:
    s = Settings.from_env(BASE)
    with pytest.raises(AttributeError, match="immutable"):
        s.port = 1
    assert s == Settings.from_env(BASE)
    assert hash(s) == hash(Settings.from_env(BASE))
    assert s != s.replace(port=6543)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_CONNECT_BUDGET", "nan"),
        ("DB_IDLE_PING_AFTER", "inf"),
        ("DB_DEADLINE_MARGIN", "-1"),
    ],
)
def test_non_finite_or_out_of_range_seconds_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({**BASE, variable: value})
    assert info.value.variable == variable


def test_replace_revalidates() -> None:
    s = Settings.from_env(BASE)
    assert s.replace(port=1234).port == 1234
    with pytest.raises(ConfigurationError):
        s.replace(auth_mode="nope")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.5.0.9", True),
        ("::1", True),
        ("/var/run/postgresql", True),
        ("10.0.0.5", False),
        ("proxy.proxy-abc.us-east-1.rds.amazonaws.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert Settings(host=host).effective_sslmode() == ("prefer" if loopback else "verify-full")
