"""IAM auth tokens: byte-identical to boto3's, cached on a monotonic clock, refreshed on demand."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import botocore.auth
import pytest

from lambda_db._credentials._iam_token import sign_token
from lambda_db._credentials._quiet import muted_loggers
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db.config import Settings
from lambda_db.errors import ConfigurationError
from tests.conftest import FakeClock

from .conftest import ACCESS_KEY, REGION, SESSION_TOKEN, FrozenAwsTime

HOST = "app-proxy.proxy-abcdefghijkl.eu-west-1.rds.amazonaws.com"


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": HOST,
        "port": 5432,
        "dbname": "app",
        "user": "app_user",
        "auth_mode": "iam",
        "region": REGION,
    }
    values.update(overrides)
    return Settings(**values)


def _boto3_token(monkeypatch: pytest.MonkeyPatch, host: str, port: int, user: str) -> str:
    """boto3's token, signed by botocore's pure-Python SigV4 query signer.

    With awscrt installed botocore swaps in the CRT signer, which orders the query
    differently (same parameters, same signature; see the test below). The Lambda runtime
    ships botocore without awscrt, so the pure-Python signer is the one to match byte for
    byte.
    """
    monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "v4-query", botocore.auth.SigV4QueryAuth)
    client = boto3.client("rds", region_name=REGION)
    return str(client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user))


def test_token_is_byte_identical_to_generate_db_auth_token(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = IamTokenProvider(_settings()).get().password
    assert token == _boto3_token(monkeypatch, HOST, 5432, "app_user")
    query = dict(parse_qsl(urlsplit("https://" + str(token)).query))
    assert query["Action"] == "connect"
    assert query["DBUser"] == "app_user"
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-Date"] == "20240501T120000Z"
    assert query["X-Amz-Security-Token"] == SESSION_TOKEN
    assert query["X-Amz-Credential"] == f"{ACCESS_KEY}/20240501/{REGION}/rds-db/aws4_request"


def test_token_matches_the_crt_signer_parameter_for_parameter(
    aws_env: dict[str, str], aws_time: FrozenAwsTime
) -> None:
    pytest.importorskip("awscrt")
    token = str(IamTokenProvider(_settings(user="app user")).get().password)
    crt = boto3.client("rds", region_name=REGION).generate_db_auth_token(HOST, 5432, "app user")
    assert sorted(parse_qsl(token.split("?", 1)[1])) == sorted(parse_qsl(crt.split("?", 1)[1]))


def test_tokens_are_reused_until_a_minute_before_expiry(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, clock: FakeClock
) -> None:
    provider = IamTokenProvider(_settings(), clock=clock)
    first = provider.get().password
    aws_time.advance(60)
    clock.advance(IamTokenProvider.TOKEN_LIFETIME - IamTokenProvider.REFRESH_MARGIN - 1)
    assert provider.get().password == first
    assert provider.minted == 1
    clock.advance(1)
    assert provider.get().password != first
    assert provider.minted == 2


def test_refresh_mints_a_new_token(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, clock: FakeClock
) -> None:
    provider = IamTokenProvider(_settings(), clock=clock)
    first = provider.get().password
    aws_time.advance(1)
    assert provider.get(refresh=True).password != first
    assert provider.minted == 2


def test_cache_is_keyed_by_access_key(
    aws_env: dict[str, str],
    aws_time: FrozenAwsTime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = iter(["AKIAFIRSTKEYEXAMPLE", "AKIAFIRSTKEYEXAMPLE", "AKIASECONDKEYEXAMPL"])

    class Creds:
        secret_key = "s"
        token = None

        def __init__(self) -> None:
            self.access_key = next(keys)

    provider = IamTokenProvider(_settings(), clock=clock, credentials=Creds)  # type: ignore[arg-type]
    a, b, c = (provider.get().password for _ in range(3))
    assert a == b != c
    assert provider.minted == 2


def test_credentials_are_read_when_minting_not_at_construction(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = IamTokenProvider(_settings())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIALATERKEYEXAMPLE")
    assert "AKIALATERKEYEXAMPLE%2F" in str(provider.get().password)


def test_without_environment_keys_the_rest_of_botocores_chain_is_used(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    with open(aws_env["AWS_SHARED_CREDENTIALS_FILE"], "w") as f:
        f.write("[default]\naws_access_key_id = AKIAFROMFILEEXAMPLE\naws_secret_access_key = s\n")
    token = str(IamTokenProvider(_settings()).get().password)
    assert "X-Amz-Credential=AKIAFROMFILEEXAMPLE%2F" in token
    assert "X-Amz-Security-Token" not in token


def test_invalidate_forgets_tokens_and_credentials(
    aws_env: dict[str, str], aws_time: FrozenAwsTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = IamTokenProvider(_settings())
    provider.get()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIARESTOREDEXAMPLE")  # SnapStart restore
    provider.invalidate()
    assert "AKIARESTOREDEXAMPLE%2F" in str(provider.get().password)
    assert provider.minted == 2


def test_missing_region_names_the_variables(aws_env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match=r"DB_REGION.*AWS_REGION") as info:
        IamTokenProvider(_settings(region=None)).get()
    assert info.value.variable == "DB_REGION"


def test_missing_aws_credentials_is_a_configuration_error(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    with pytest.raises(ConfigurationError, match="no AWS credentials"):
        IamTokenProvider(_settings()).get()


def test_token_stays_out_of_reprs(aws_env: dict[str, str], aws_time: FrozenAwsTime) -> None:
    provider = IamTokenProvider(_settings())
    credentials = provider.get()
    token = str(credentials.password)
    signature = dict(parse_qsl(token.split("?", 1)[1]))["X-Amz-Signature"]
    for text in (repr(credentials), repr(provider), provider.describe(), repr(provider._tokens)):
        assert signature not in text


def test_describe_names_the_iam_resource(aws_env: dict[str, str]) -> None:
    text = IamTokenProvider(_settings()).describe()
    assert "rds-db:connect" in text
    assert f"arn:aws:rds-db:{REGION}:ACCOUNT:dbuser:prx-RESOURCEID/app_user" in text


def test_sign_token_has_no_scheme() -> None:
    class Creds:
        access_key, secret_key, token = "AKIDEXAMPLE", "secret", None

    token = sign_token(Creds(), host="h.example", port=6543, user="u", region="us-east-1")
    assert token.startswith("h.example:6543/?Action=connect&DBUser=u&")
    assert "X-Amz-Security-Token" not in token


def test_muted_loggers_is_per_logger_and_restores(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    with muted_loggers("botocore.auth"):
        logging.getLogger("botocore.auth").debug("hidden")
        logging.getLogger("botocore.other").debug("shown-1")
    logging.getLogger("botocore.auth").debug("shown-2")
    assert "hidden" not in caplog.text
    assert "shown-1" in caplog.text and "shown-2" in caplog.text
