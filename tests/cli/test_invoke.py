"""lambda-db invoke: the subcommand over lambda_db.cli.invoke (the function under awslambdaric)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambda_db_lab.appdb import AppDb
from tests.cli.conftest import Cli

ROOT = Path(__file__).resolve().parents[2]

TINY_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Timeout: 5
    Environment:
      Variables:
        GREETING: hello
Resources:
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.12
  FailFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.fail
      Runtime: python3.12
"""

TINY_HANDLER = """\
import os

CALLS = 0

def handler(event, context):
    global CALLS
    CALLS += 1
    print("a log line, on stderr")
    return {"greeting": os.environ["GREETING"], "name": event["name"], "calls": CALLS,
            "remaining_ms_positive": context.get_remaining_time_in_millis() > 0}

def fail(event, context):
    raise ValueError("no such order")
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text(TINY_HANDLER)
    (tmp_path / "template.yaml").write_text(TINY_TEMPLATE)
    (tmp_path / "event.json").write_text(json.dumps({"name": "Ada"}))
    (tmp_path / "env.json").write_text(json.dumps({"EchoFunction": {"GREETING": "bonjour"}}))
    return tmp_path


def test_invoke_on_a_tiny_template(cli: Cli, tiny: Path) -> None:
    result = cli(
        "invoke",
        "EchoFunction",
        "--event",
        str(tiny / "event.json"),
        "--template",
        str(tiny / "template.yaml"),
    )
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout) == {
        "greeting": "hello",
        "name": "Ada",
        "calls": 1,
        "remaining_ms_positive": True,
    }
    assert "a log line, on stderr" in result.stderr


def test_several_events_run_in_one_warm_environment(cli: Cli, tiny: Path) -> None:
    event = str(tiny / "event.json")
    result = cli(
        "invoke", "EchoFunction", "-e", event, "-e", event, "-t", str(tiny / "template.yaml")
    )
    assert result.status == 0, result.stderr
    assert [json.loads(line)["calls"] for line in result.stdout.splitlines()] == [1, 2]


def test_invoke_env_vars_override_the_template(cli: Cli, tiny: Path) -> None:
    result = cli(
        "invoke",
        "EchoFunction",
        "-e",
        str(tiny / "event.json"),
        "--env-vars",
        str(tiny / "env.json"),
        "-t",
        str(tiny / "template.yaml"),
    )
    assert json.loads(result.stdout)["greeting"] == "bonjour"


def test_a_function_error_exits_1_with_lambdas_payload(cli: Cli, tiny: Path) -> None:
    result = cli(
        "invoke",
        "FailFunction",
        "--event",
        str(tiny / "event.json"),
        "--template",
        str(tiny / "template.yaml"),
    )
    assert result.status == 1
    payload = json.loads(result.stdout)
    assert payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == "no such order"


def test_unknown_function_or_bad_event_file_exit_2(cli: Cli, tiny: Path) -> None:
    template = str(tiny / "template.yaml")
    missing = cli("invoke", "NoSuchFunction", "--event", str(tiny / "event.json"), "-t", template)
    assert missing.status == 2
    assert "NoSuchFunction" in missing.stderr
    bad = cli("invoke", "EchoFunction", "--event", str(tiny / "nope.json"), "-t", template)
    assert bad.status == 2
    assert "cannot read" in bad.stderr
    overrides = cli(
        "invoke",
        "EchoFunction",
        "-e",
        str(tiny / "event.json"),
        "-t",
        template,
        "--parameter-overrides",
        "novalue",
    )
    assert overrides.status == 2
    assert "KEY=VALUE" in overrides.stderr


def test_invoke_runs_the_connection_report_example(cli: Cli, app_db: AppDb, tmp_path: Path) -> None:
    """The project's own template: ConnectionReportFunction publishes diagnostics.collect."""
    template = ROOT / "template.yaml"
    if not template.exists() or "ConnectionReportFunction" not in template.read_text():
        pytest.skip("the example template or its ConnectionReportFunction is not there")
    env = tmp_path / "env.json"
    env.write_text(
        json.dumps(
            {
                "Parameters": {
                    "DB_HOST": app_db["DB_HOST"],
                    "DB_PORT": app_db["DB_PORT"],
                    "DB_NAME": app_db.name,
                    "DB_USER": app_db.role,
                    "DB_PASSWORD": app_db.password,
                    "DB_AUTH_MODE": "password",
                    "DB_SSLMODE": "disable",
                }
            }
        )
    )
    event = tmp_path / "event.json"
    event.write_text("{}")
    result = cli(
        "invoke",
        "ConnectionReportFunction",
        "--event",
        str(event),
        "--env-vars",
        str(env),
        "--template",
        str(template),
    )
    assert result.status == 0, result.stdout[-2000:] + result.stderr[-2000:]
    response = json.loads(result.stdout)  # Powertools' metric and log lines went to stderr
    assert '"_aws"' in result.stderr
    names = {(entry["scope"], entry["name"]) for entry in response["limits"]}
    assert ("server", "max_connections") in names
    assert app_db.password not in result.stdout
