"""No token, password or secret value in any log line (DEBUG, every logger) or error text;
no AWS library loaded by ``import lambda_db``."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any
from urllib.parse import parse_qsl

import pytest
from psycopg2 import sql

import lambda_db
from lambda_db._credentials.iam import IamTokenProvider
from lambda_db._credentials.secret import SecretProvider
from lambda_db.errors import AuthenticationError
from lambda_db_lab.localpg import LocalPostgres
from tests.conftest import FakeClock
from tests.support.interpreter import fresh_python

from ..conftest import AppDb
from .conftest import REGION, SECRET_KEY, SESSION_TOKEN, FrozenAwsTime, kill_backends
from .test_iam_e2e import expected_token, set_role_password


def _secret_parts(token: str) -> list[str]:
    """The token, and the parts of it that would be enough to reuse or forge it."""
    query = dict(parse_qsl(token.split("?", 1)[1]))
    return [token, query["X-Amz-Signature"], SESSION_TOKEN, SECRET_KEY]


def _assert_absent(needles: list[str], *texts: str) -> None:
    for text in texts:
        for needle in needles:
            assert needle not in text


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_iam_mode_logs_and_errors_hold_no_token(
    app_db: AppDb, pg: LocalPostgres, aws_env: dict[str, str], aws_time: FrozenAwsTime,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    env = {"DB_AUTH_MODE": "iam", "DB_HOST": "127.0.0.1", "DB_PORT": str(pg.tls_port),
           "DB_NAME": app_db.name, "DB_USER": app_db.role, "DB_REGION": REGION,
           "DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": str(pg.ca_path)}  # fmt: skip
    token = expected_token(monkeypatch, pg.tls_port, app_db.role)
    set_role_password(app_db, token)
    caplog.clear()  # boto3's own generate_db_auth_token logs its signature at DEBUG
    settings = lambda_db.Settings.from_env(env)
    provider = IamTokenProvider(settings, clock=FakeClock())
    db = lambda_db.Database(settings, provider=provider)
    needles = _secret_parts(token)
    try:
        with db.invocation() as scope:
            conn = scope.connection
            kill_backends(app_db, conn)
        aws_time.advance(30)
        set_role_password(app_db, "no-token-will-match")
        with pytest.raises(AuthenticationError) as info:
            db.get_connection()
    finally:
        db.close()
    refreshed = str(provider.get().password)  # the last minted token (cached)
    needles += _secret_parts(refreshed)
    assert any(r.name.startswith("botocore") for r in caplog.records), "DEBUG was not captured"
    _assert_absent(needles, caplog.text, _error_text(info.value), repr(db), repr(provider))
    for record in caplog.records:
        _assert_absent(needles, repr(record.args), record.getMessage())


def test_secret_mode_logs_and_errors_hold_no_password(
    app_db: AppDb, pg: LocalPostgres, secretsmanager: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def secret(password: str) -> str:
        return json.dumps({"username": app_db.role, "password": password, "host": pg.host,
                           "port": pg.port, "dbname": app_db.name})  # fmt: skip

    arn = secretsmanager.create_secret(Name="hygiene/db", SecretString=secret(app_db.password))
    settings = lambda_db.Settings(auth_mode="secret", secret_arn=arn["ARN"])
    provider = SecretProvider(settings, client=secretsmanager)
    db = lambda_db.Database(settings, provider=provider)
    wrong = "wrong-" + app_db.password
    # Only what lambda-db logs counts: the test's own boto3 calls (create_secret,
    # put_secret_value) log their request bodies at DEBUG, as botocore always does.
    logged: list[logging.LogRecord] = []
    caplog.clear()
    try:
        with db.invocation() as scope:
            conn = scope.connection
        logged += caplog.records
        pg.execute(
            sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(app_db.role)),
            ("server-" + app_db.password,),
        )
        secretsmanager.put_secret_value(SecretId=arn["ARN"], SecretString=secret(wrong))
        kill_backends(app_db, conn)
        caplog.clear()
        with pytest.raises(AuthenticationError) as info:
            db.get_connection()
        logged += caplog.records
    finally:
        db.close()
    assert provider.fetches == 2
    assert any(r.name.startswith("botocore") for r in logged), "DEBUG was not captured"
    needles = [app_db.password, wrong]
    _assert_absent(needles, _error_text(info.value), repr(db), repr(provider))
    for record in logged:
        _assert_absent(needles, repr(record.args), record.getMessage())


def test_import_lambda_db_loads_no_aws_library() -> None:
    code = (
        "import sys, lambda_db\n"
        "from lambda_db._credentials import make_provider\n"
        "s = lambda_db.Settings(host='h', dbname='d', user='u', password='p')\n"
        "make_provider(s).get()\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('boto3', 'botocore', 'awscrt', 's3transfer')"
        " or m.startswith('aws_lambda_powertools.utilities.parameters')]\n"
        "print(','.join(loaded))\n"
    )
    assert fresh_python(code) == ""


def test_iam_mode_loads_botocore_but_not_boto3_or_the_rds_model(aws_env: dict[str, str]) -> None:
    code = (
        "import sys, lambda_db\n"
        "import botocore.loaders as L\n"
        "models = []\n"
        "orig = L.Loader.load_service_model\n"
        "L.Loader.load_service_model = lambda s, *a, **k: models.append(a) or orig(s, *a, **k)\n"
        "from lambda_db._credentials import make_provider\n"
        "s = lambda_db.Settings(host='h.example', dbname='d', user='u', auth_mode='iam',"
        " region='eu-west-1')\n"
        "assert make_provider(s).get().password\n"
        "print('boto3' in sys.modules, models)\n"
    )
    assert fresh_python(code) == "False []"


def test_the_credentials_package_has_no_import_circle() -> None:
    """Imports go one way: the modes use ``base`` and the private helpers (``_aws``,
    ``_budget``, ...); nothing imports a mode or the package itself, except
    ``make_provider`` importing a mode when asked, and the helpers form no circle."""
    import ast
    from pathlib import Path

    import lambda_db._credentials as package

    folder = Path(package.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        imports[path.stem] = {n for n in names if n.startswith("lambda_db._credentials")}
    prefix = "lambda_db._credentials."
    assert imports.pop("__init__") == {prefix + m for m in ("base", "password", "secret", "iam")}
    helpers = {"base"} | {m for m in imports if m.startswith("_")}
    graph: dict[str, set[str]] = {}
    for module, names in imports.items():
        assert "lambda_db._credentials" not in names, module
        graph[module] = {name.removeprefix(prefix) for name in names}
        assert graph[module] <= helpers, module
    assert graph["base"] == graph["_budget"] == set()
    assert graph["_aws"] == {"_budget", "_quiet"}
    placed: set[str] = set()  # each module after all it imports: there is no circle
    while len(placed) < len(graph):
        ready = {m for m, used in graph.items() if m not in placed and used <= placed}
        assert ready, f"an import circle among {sorted(set(graph) - placed)}"
        placed |= ready
