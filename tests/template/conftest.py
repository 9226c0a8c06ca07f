"""Fixtures for the template checks: the repository's files, env.json aimed at the test
server, a stand-in for CloudFormation's response URL, and a way to run an event file."""

from __future__ import annotations

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

#: Which function each event file is for, by file name prefix.
FUNCTION_BY_PREFIX = {
    "items-": "ItemsFunction",
    "connection-report": "ConnectionReportFunction",
    "schema-": "SchemaSetupFunction",
}
#: The variables env.json points at a database; the tests aim them at their own.
DB_VARIABLES = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_AUTH_MODE")


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


@pytest.fixture
def env_vars(app_db: AppDb) -> dict[str, Any]:
    """events/env.json with its database variables aimed at this test's database."""
    with ENV_JSON.open(encoding="utf-8") as f:
        env: dict[str, Any] = json.load(f)
    env["Parameters"].update({name: app_db[name] for name in DB_VARIABLES})
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
def run(env_vars: dict[str, Any], cloudformation: CloudFormation) -> Run:
    """``run("items-get.json", **changes)``: invoke an event file as sam local invoke would.

    Keyword arguments: ``event`` (replaces the file's content), ``close_connections``,
    ``environ``; custom resource events answer the local ``cloudformation`` server.
    """

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
