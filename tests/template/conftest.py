"""Fixtures for the template checks: the repository's files, env.json aimed at the test
server, a stand-in for CloudFormation's response URL, a way to run an event file, and the
application and report roles the schema setup creates (fresh ones per test, dropped
afterwards)."""

from __future__ import annotations

import copy
import http.server
import json
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lambda_db.cli.invoke import invoke, load_template
from tests.conftest import AppDb

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
EVENTS = REPO / "events"
ENV_JSON = EVENTS / "env.json"

#: The template's functions, by logical id.
FUNCTIONS = frozenset(
    {
        "ItemsFunction",
        "StockFunction",
        "ItemImportFunction",
        "ConnectionReportFunction",
        "SchemaSetupFunction",
    }
)

#: Which function each event file is for, by file name prefix.
FUNCTION_BY_PREFIX = {
    "items-": "ItemsFunction",
    "stock-": "StockFunction",
    "connection-report": "ConnectionReportFunction",
    "schema-": "SchemaSetupFunction",
    "item-import-": "ItemImportFunction",
}
#: The variables env.json points at a database; the tests aim them at their own.
DB_VARIABLES = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_AUTH_MODE")
#: The roles the schema events name; ``run`` gives each test its own instead.
EVENTS_APP_USER = "app_user"
EVENTS_REPORT_USER = "app_report"
#: The schema setup's local-only variables: the application and report roles' passwords.
APP_PASSWORD_VARIABLE = "APP_DB_PASSWORD"
REPORT_PASSWORD_VARIABLE = "REPORT_DB_PASSWORD"


def function_for(event_file: str) -> str:
    for prefix, function in FUNCTION_BY_PREFIX.items():
        if event_file.startswith(prefix):
            return function
    raise AssertionError(f"no function for event file {event_file}")


def load_event(name: str) -> dict[str, Any]:
    with (EVENTS / name).open(encoding="utf-8") as f:
        event: dict[str, Any] = json.load(f)
    return event


def tool(name: str) -> str:
    """A console script of this virtualenv (cfn-lint, sam), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is a dev dependency)")
    return found


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """template.yaml, short-form tags read as their long forms."""
    return load_template(TEMPLATE)


#: The region the offline SAM transform writes into ARNs (no AWS call is made).
TRANSFORM_REGION = "us-east-1"


def sam_transform(sam_template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template SAM makes of ``sam_template``, offline.

    samtranslator (what ``sam validate`` and ``sam deploy`` run) with local code paths
    replaced by S3 placeholders, as ``sam package`` would, and resource ``Metadata`` passed
    through (checkov reads its skips there). Managed policy names are not resolved: the
    template uses ARNs only.
    """
    import boto3
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

    document = copy.deepcopy(sam_template)
    for resource in document["Resources"].values():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(properties.get(key), str):
                properties[key] = "s3://bucket/key"
    translator = Translator(
        None, Parser(), boto_session=boto3.session.Session(region_name=TRANSFORM_REGION)
    )
    transformed: dict[str, Any] = translator.translate(
        document,
        parameter_values={},
        passthrough_metadata=True,
        get_managed_policy_map=dict,
    )
    return transformed


@pytest.fixture(scope="session")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """template.yaml as CloudFormation sees it after the SAM transform."""
    return sam_transform(template)


@dataclass(frozen=True)
class AppRole:
    """A role a test's schema setup creates (the application or the report role), and its
    local password."""

    name: str
    password: str


def _drop_role(app_db: AppDb, name: str) -> None:
    app_db.pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
    )
    if app_db.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)):
        app_db.query(f'DROP OWNED BY "{name}"')
        app_db.query(f'DROP ROLE "{name}"')


@pytest.fixture
def master(app_db: AppDb) -> AppDb:
    """The database owner, which the schema setup logs in as here, made like RDS's master
    user: CREATEROLE, and pg_monitor WITH ADMIN OPTION (what rds_superuser gives it), so
    that it may grant pg_monitor to the report role on any PostgreSQL version."""
    app_db.pg.execute(f'ALTER ROLE "{app_db.role}" CREATEROLE')
    app_db.pg.execute(f'GRANT pg_monitor TO "{app_db.role}" WITH ADMIN OPTION')
    return app_db


@pytest.fixture
def rds_iam(app_db: AppDb) -> Iterator[None]:
    """RDS's rds_iam role, which the database owner (the master user there) may grant."""
    app_db.pg.execute("CREATE ROLE rds_iam NOLOGIN")
    app_db.pg.execute(f'GRANT rds_iam TO "{app_db.role}" WITH ADMIN OPTION')
    try:
        yield
    finally:
        app_db.pg.execute("DROP ROLE rds_iam")


@pytest.fixture
def app_role(master: AppDb) -> Iterator[AppRole]:
    """An application role name of this test's own (roles are server-wide), dropped
    afterwards."""
    role = AppRole(f"{master.name}_app", "app-pw-" + master.password)
    yield role
    _drop_role(master, role.name)


@pytest.fixture
def report_role(master: AppDb) -> Iterator[AppRole]:
    """A report role name of this test's own, dropped afterwards."""
    role = AppRole(f"{master.name}_report", "report-pw-" + master.password)
    yield role
    _drop_role(master, role.name)


@pytest.fixture
def env_vars(app_db: AppDb, app_role: AppRole, report_role: AppRole) -> dict[str, Any]:
    """events/env.json with its database variables aimed at this test's database.

    Every function logs in as the database owner here (the items tests change its
    limits); the schema setup gives the application and report roles passwords, so tests
    can log in as those roles too (``app_role``, ``report_role``).
    """
    with ENV_JSON.open(encoding="utf-8") as f:
        env: dict[str, Any] = json.load(f)
    ours = {name: app_db[name] for name in DB_VARIABLES}
    for section in env.values():
        for name in set(ours) & set(section):
            section[name] = ours[name]
    env["Parameters"].update(ours)
    schema_setup = env.setdefault("SchemaSetupFunction", {})
    schema_setup[APP_PASSWORD_VARIABLE] = app_role.password
    schema_setup[REPORT_PASSWORD_VARIABLE] = report_role.password
    return env


@dataclass
class CloudFormation:
    """Records what custom resources PUT to their ``ResponseURL``."""

    url: str
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def last(self) -> dict[str, Any]:
        assert self.requests, "the function sent CloudFormation no answer"
        return self.requests[-1][2]


@pytest.fixture
def cloudformation() -> Iterator[CloudFormation]:
    """An HTTP server on 127.0.0.1 standing in for the pre-signed S3 response URL."""
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            received.append((self.command, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield CloudFormation(f"http://127.0.0.1:{port}/response?signature=test", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


Run = Callable[..., Any]


@pytest.fixture
def run(
    env_vars: dict[str, Any],
    cloudformation: CloudFormation,
    app_role: AppRole,
    report_role: AppRole,
) -> Run:
    """``run("items-get.json", **changes)``: invoke an event file as sam local invoke would.

    Keyword arguments: ``event`` (replaces the file's content), ``close_connections``,
    ``environ``; custom resource events answer the local ``cloudformation`` server and
    name this test's application and report roles.
    """
    ours = {EVENTS_APP_USER: app_role.name, EVENTS_REPORT_USER: report_role.name}

    def run_event(
        name: str,
        *,
        event: dict[str, Any] | None = None,
        close_connections: bool = True,
        environ: dict[str, str] | None = None,
    ) -> Any:
        payload = load_event(name) if event is None else event
        if "ResponseURL" in payload:
            payload = {**payload, "ResponseURL": cloudformation.url}
        properties = payload.get("ResourceProperties")
        if isinstance(properties, dict):
            renamed = {
                key: ours[value]
                for key, value in properties.items()
                if key in ("AppUser", "ReportUser") and value in ours
            }
            payload = {**payload, "ResourceProperties": {**properties, **renamed}}
        return invoke(
            function_for(name),
            payload,
            template_path=TEMPLATE,
            env_vars=env_vars,
            environ=environ,
            close_connections=close_connections,
        )

    return run_event


@pytest.fixture
def schema(run: Run, cloudformation: CloudFormation) -> None:
    """The stack's first deploy: the schema custom resource creates the table."""
    answer = run("schema-create.json")
    assert answer["Status"] == "SUCCESS", answer
    assert cloudformation.last()["Status"] == "SUCCESS"
