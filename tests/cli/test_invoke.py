"""lambda-db invoke: the subcommand over lambda_db.cli.invoke (the function under awslambdaric),
and the runtime it starts never outliving it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_db_lab.appdb import AppDb
from lambda_db_lab.wait import wait_for
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


# ---------------------------------------------------------------- nothing outlives the command

SLEEPY_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  SleepyFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: sleepy.handler
      Runtime: python3.12
      Timeout: 60
      Environment:
        Variables:
          PID_FILE: ""
          SLEEP: "0"
"""

SLEEPY_HANDLER = """\
import os, time

def handler(event, context):
    with open(os.environ["PID_FILE"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(float(os.environ["SLEEP"]))
    return os.getpid()
"""

#: Starts the function's environment, invokes it once (it is frozen afterwards), says so,
#: and waits to be killed.
HOLDER = """\
import json, sys, time
from lambda_db.cli.invoke import LocalFunction

env_vars = json.loads(sys.argv[2])
function = LocalFunction("SleepyFunction", template_path=sys.argv[1], env_vars=env_vars)
print(json.dumps(function.invoke({}).payload), flush=True)
time.sleep(120)
"""


def _state(pid: int) -> str | None:
    """The process's state letter (``S``, ``T`` stopped, ``Z`` zombie), ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z", "X")


@pytest.fixture
def sleepy(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A template whose function writes its pid to a file; (template, pid file, env vars)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sleepy.py").write_text(SLEEPY_HANDLER)
    (tmp_path / "template.yaml").write_text(SLEEPY_TEMPLATE)
    pid_file = tmp_path / "runtime.pid"
    return tmp_path / "template.yaml", pid_file, {"SleepyFunction": {"PID_FILE": str(pid_file)}}


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids the test started: any still running at its end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_ends_the_command_and_its_runtime(
    sleepy: tuple[Path, Path, dict[str, Any]], tmp_path: Path, leftovers: list[int]
) -> None:
    """``timeout 1.5 lambda-db invoke ...``: the runtime, busy in the handler, goes too."""
    template, pid_file, env_vars = sleepy
    env_vars["SleepyFunction"]["SLEEP"] = "30"
    (tmp_path / "env.json").write_text(json.dumps(env_vars))
    (tmp_path / "event.json").write_text("{}")
    command = [str(Path(sys.executable).parent / "lambda-db"), "invoke", "SleepyFunction"]
    command += ["-e", str(tmp_path / "event.json"), "-t", str(template)]
    command += ["--env-vars", str(tmp_path / "env.json")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leftovers.append(proc.pid)
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the handler", timeout=60)
    runtime = int(pid_file.read_text())
    leftovers.append(runtime)
    assert not _gone(runtime)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err  # interrupted, after closing the environment
    wait_for(lambda: _gone(runtime), "the runtime to end", timeout=10)


def test_a_frozen_runtime_dies_with_a_killed_parent(
    sleepy: tuple[Path, Path, dict[str, Any]], leftovers: list[int]
) -> None:
    """SIGKILL gives the parent no chance to clean up: the kernel ends the runtime
    (PR_SET_PDEATHSIG), although it is stopped, and its connections with it."""
    template, _, env_vars = sleepy
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(template), json.dumps(env_vars)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    leftovers.append(holder.pid)
    assert holder.stdout is not None
    runtime = int(json.loads(holder.stdout.readline()))
    leftovers.append(runtime)
    wait_for(lambda: _state(runtime) == "T", "the environment to be frozen", timeout=10)
    holder.kill()
    holder.wait(timeout=10)
    wait_for(lambda: _gone(runtime), "the frozen runtime to end", timeout=10)
