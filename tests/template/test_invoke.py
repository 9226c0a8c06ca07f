"""lambda_db.cli.invoke against small templates: the environment SAM CLI gives the function
(compared with SAM CLI's own resolver), and the function run as Lambda runs it, under
awslambdaric: its context, marshalling, init phase, warm and frozen environment, errors."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from lambda_db.cli.invoke import (
    InvokeError,
    LocalFunction,
    invoke,
    load_function,
    load_template,
)
from lambda_db_lab.wait import wait_for

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  P1: {Type: String, Default: p1}
  Env: {Type: String, Default: dev}
  PList: {Type: CommaDelimitedList, Default: "a,b,c"}
  PNum: {Type: Number, Default: 5}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
  NotProd: !Not [!Condition IsProd]
Mappings:
  M: {k: {v: mapped}}
Globals:
  Function:
    Runtime: python3.12
    Timeout: 7
    LoggingConfig: {LogFormat: JSON, ApplicationLogLevel: WARN}
    Environment:
      Variables:
        FROM_GLOBALS: g
        OVERRIDDEN: global
        FROM_SHELL: template
Resources:
  Bucket:
    Type: AWS::S3::Bucket
  Proxy:
    Type: AWS::RDS::DBProxy
    Properties: {}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: probe_app.handler
      MemorySize: 512
      Environment:
        Variables:
          OVERRIDDEN: function
          REF_PARAM: !Ref P1
          REF_REGION: !Ref AWS::Region
          REF_STACK: !Ref AWS::StackName
          REF_ACCOUNT: !Ref AWS::AccountId
          REF_PARTITION: !Ref AWS::Partition
          REF_URLSUFFIX: !Ref AWS::URLSuffix
          REF_RESOURCE: !Ref Bucket
          GETATT_ARN: !GetAtt Bucket.Arn
          GETATT_PROXY: !GetAtt Proxy.Endpoint
          GETATT_LIST: !GetAtt [Proxy, DBProxyArn]
          SUB: !Sub "${P1}-${AWS::AccountId}-${Bucket}"
          SUB_ATTR: !Sub "${Proxy.Endpoint}:5432"
          SUB_VARS: !Sub ["${x}/${P1}", {x: !Ref AWS::Partition}]
          JOIN: !Join ["-", [a, !Ref P1]]
          SELECT: !Select [1, !Ref PList]
          SPLIT_SELECT: !Select [0, !Split [",", "x,y"]]
          IF: !If [IsProd, "yes", "no"]
          IF_NOT: !If [NotProd, "yes", "no"]
          FIND: !FindInMap [M, k, v]
          NUMBER: 5
          FLOAT: 1.5
          BOOL: true
          NUM_PARAM: !Ref PNum
          PROXY_ID: !Select [6, !Split [":", !GetAtt Proxy.DBProxyArn]]
          BASE64: !Base64 abc
          FROM_ENV_JSON: template
          FROM_PARAMETERS: template
  Other:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: probe_app.handler
      Runtime: nodejs20.x
"""

HANDLER = """\
import os
import sys
import threading
import time
from decimal import Decimal

time.sleep(float(os.environ.get("INIT_SECONDS", "0")))  # a slow import: the init phase
CALLS = 0
TICKS = 0


def _tick():
    global TICKS
    while True:
        TICKS += 1
        time.sleep(0.005)


threading.Thread(target=_tick, daemon=True).start()


def handler(event, context):
    global CALLS
    CALLS += 1
    action = event.get("action")
    if action == "fail":
        raise ValueError("asked to fail")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "exit":
        sys.exit(3)
    if action == "unserializable":
        return {"value": object()}
    return {
        "env": dict(os.environ),
        "calls": CALLS,
        "ticks": TICKS,
        "pid": os.getpid(),
        "price": Decimal("12.5"),
        "remaining": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "request_id": context.aws_request_id,
        "log_stream": context.log_stream_name,
        "log_group": context.log_group_name,
        "identity": type(context.identity).__name__,
        "tenant_id": context.tenant_id,
        "context_type": type(context).__module__ + "." + type(context).__name__,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "cwd": os.getcwd(),
    }
"""

AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A template and its handler; a shell without AWS credentials (SAM's placeholders)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "probe_app.py").write_text(HANDLER)
    template = tmp_path / "template.yaml"
    template.write_text(TEMPLATE)
    for name in (*AWS_VARIABLES, "FROM_SHELL", "OVERRIDDEN"):
        monkeypatch.delenv(name, raising=False)
    return template


def sam_cli_environment(
    template: Path,
    parameter_overrides: dict[str, str],
    shell_values: dict[str, str],
    overrides: dict[str, str],
) -> dict[str, str]:
    """What ``sam local invoke`` gives the container, from SAM CLI's own code."""
    pytest.importorskip("samcli")
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
    from samcli.local.lambdafn.env_vars import EnvironmentVariables

    stacks, _ = SamLocalStackProvider.get_stacks(
        str(template), parameter_overrides=parameter_overrides
    )
    function = SamFunctionProvider(stacks).get("Fn")
    assert function is not None
    resolved: dict[str, str] = EnvironmentVariables(
        function.name,
        function.memory,
        function.timeout,
        function.handler,
        function.logging_config,
        variables=function.environment["Variables"],
        shell_env_values=shell_values,
        override_values=overrides,
        aws_creds={},
    ).resolve()
    return resolved


#: Set by Lambda's runtime rather than by the template: lambda-db invoke gives Lambda's
#: forms where SAM CLI writes placeholders.
RUNTIME_OWNED = {"AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SAM CLI's own, not ours
@pytest.mark.parametrize("parameter_overrides", [{}, {"Env": "prod", "P1": "q", "PList": "x,y,z"}])
def test_environment_is_what_sam_cli_gives(
    project: Path, parameter_overrides: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_SHELL", "shell")
    env_vars = {
        "Parameters": {"FROM_PARAMETERS": "parameters", "FROM_ENV_JSON": "parameters"},
        "Fn": {"FROM_ENV_JSON": "function", "UNDECLARED": "ignored"},
    }
    response = invoke(
        "Fn",
        {},
        template_path=project,
        env_vars=env_vars,
        parameter_overrides=parameter_overrides,
    )
    expected = sam_cli_environment(
        project,
        parameter_overrides,
        shell_values={"FROM_SHELL": "shell"},
        overrides={"FROM_PARAMETERS": "parameters", "FROM_ENV_JSON": "function"},
    )
    seen = response["env"]
    assert {n: seen.get(n) for n in expected if n not in RUNTIME_OWNED} == {
        n: v for n, v in expected.items() if n not in RUNTIME_OWNED
    }
    assert "UNDECLARED" not in seen
    assert (seen["FROM_ENV_JSON"], seen["FROM_PARAMETERS"], seen["FROM_SHELL"]) == (
        "function",
        "parameters",
        "shell",
    )
    assert seen["AWS_SAM_LOCAL"] == "true"
    assert seen["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/Fn"  # SAM CLI: aws/lambda/Fn
    assert seen["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.12"


def test_the_function_sees_only_its_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process: the shell's other variables do not leak in (as in Lambda)."""
    monkeypatch.setenv("NOT_DECLARED_ANYWHERE", "shell")
    seen = invoke("Fn", {}, template_path=project)["env"]
    assert "NOT_DECLARED_ANYWHERE" not in seen
    assert seen["LAMBDA_TASK_ROOT"] == str(project.parent / "src")


def test_intrinsics_resolve_to_sam_cli_placeholders(project: Path) -> None:
    env = load_function("Fn", template_path=project).environment
    assert env["REF_PARAM"] == "p1"
    assert env["REF_RESOURCE"] == "Bucket"
    assert env["GETATT_PROXY"] == ""  # unresolvable: blank, as sam local gives it
    assert env["SUB_ATTR"] == "$Proxy.Endpoint:5432"
    assert env["SELECT"] == "b"
    assert env["BOOL"] == "true"


def test_escapes_and_no_value_read_as_sam_cli_reads_them(tmp_path: Path) -> None:
    """SAM CLI's reading, not CloudFormation's: that is what sam local invoke gives too."""
    (tmp_path / "src").mkdir()
    (tmp_path / "t.yaml").write_text(
        textwrap.dedent(
            """\
            Resources:
              Fn:
                Type: AWS::Serverless::Function
                Properties:
                  Runtime: python3.12
                  CodeUri: src/
                  Handler: app.handler
                  Environment:
                    Variables:
                      ESCAPED: !Sub "${!Literal}-${AWS::Region}"
                      REMOVED: !Ref AWS::NoValue
            """
        )
    )
    env = load_function("Fn", template_path=tmp_path / "t.yaml").environment
    assert env["ESCAPED"] == "${!Literal}-us-east-1"  # CloudFormation: "${Literal}-..."
    assert env["REMOVED"] == ""  # CloudFormation: no variable


def test_the_runtimes_context(project: Path) -> None:
    response = invoke("Fn", {}, template_path=project)
    assert response["context_type"] == "awslambdaric.lambda_context.LambdaContext"
    assert 6000 < response["remaining"] <= 7000
    # awslambdaric reads the memory size from the environment: a string, as in Lambda
    assert (response["function_name"], response["memory"]) == ("Fn", "512")
    assert response["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:Fn"
    assert response["identity"] == "CognitoIdentity"
    assert response["tenant_id"] is None
    assert response["log_group"] == "/aws/lambda/Fn"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", response["log_stream"])
    assert response["trace"].startswith("Root=1-")
    assert response["cwd"] == str(project.parent / "src")
    assert response["env"]["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7"
    assert response["env"]["AWS_LAMBDA_LOG_LEVEL"] == "WARN"


def test_a_decimal_is_marshalled_as_a_number(project: Path) -> None:
    """A NUMERIC column's value: the runtime's simplejson writes 12.5, not a MarshalError."""
    assert invoke("Fn", {}, template_path=project)["price"] == 12.5


def test_an_unserializable_response_is_the_runtimes_marshal_error(project: Path) -> None:
    response = invoke("Fn", {"action": "unserializable"}, template_path=project)
    assert response["errorType"] == "Runtime.MarshalError"


def test_init_is_not_charged_to_the_deadline(project: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    short.write_text(TEMPLATE.replace("Timeout: 7", "Timeout: 1"))
    with LocalFunction("Fn", template_path=short, environ={"INIT_SECONDS": "1.5"}) as fn:
        result = fn.invoke({})
    assert result.ok, result.payload
    assert result.cold
    assert result.payload["remaining"] > 900


def test_warm_across_events_and_frozen_between_them(project: Path) -> None:
    with LocalFunction("Fn", template_path=project) as fn:
        first = fn.invoke({})
        pid = fn.environment.pid
        assert pid is not None
        wait_for(lambda: _process_state(pid) == "T", "SIGSTOP between invocations", timeout=5)
        time.sleep(0.5)  # the background thread would tick ~100 times if it could run
        second = fn.invoke({})
    assert (first.cold, second.cold) == (True, False)
    assert (first.payload["calls"], second.payload["calls"]) == (1, 2)
    assert first.payload["pid"] == second.payload["pid"] == pid
    assert first.payload["request_id"] != second.payload["request_id"]
    assert first.payload["trace"] != second.payload["trace"]  # _X_AMZN_TRACE_ID per event
    assert second.payload["ticks"] - first.payload["ticks"] < 40, "it ran while frozen"


def test_an_exception_is_lambdas_error_payload(project: Path) -> None:
    with LocalFunction("Fn", template_path=project) as fn:
        failed = fn.invoke({"action": "fail"})
        after = fn.invoke({})
    assert failed.error_type == "ValueError"
    payload = failed.payload
    assert (payload["errorType"], payload["errorMessage"]) == ("ValueError", "asked to fail")
    assert payload["requestId"] == failed.request_id
    assert any("probe_app.py" in frame for frame in payload["stackTrace"])
    assert after.payload["calls"] == 2  # the environment stays warm after a handled error


def test_a_timeout_is_lambdas_error_and_ends_the_environment(project: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    short.write_text(TEMPLATE.replace("Timeout: 7", "Timeout: 1"))
    with LocalFunction("Fn", template_path=short) as fn:
        timed_out = fn.invoke({"action": "sleep", "seconds": 3})
        after = fn.invoke({})
    assert timed_out.error_type == "Sandbox.Timedout"
    assert timed_out.payload["errorMessage"] == (
        f"RequestId: {timed_out.request_id} Error: Task timed out after 1.00 seconds"
    )
    assert 1.0 <= timed_out.duration < 2.5
    assert (after.cold, after.payload["calls"]) == (True, 1)


def test_an_exiting_runtime_and_a_failed_import(project: Path, tmp_path: Path) -> None:
    with LocalFunction("Fn", template_path=project) as fn:
        exited = fn.invoke({"action": "exit"})
    assert exited.error_type == "Runtime.ExitError"
    assert "exit status 3" in exited.payload["errorMessage"]
    (project.parent / "src" / "broken_app.py").write_text("import no_such_module_here\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.replace("Handler: probe_app.handler", "Handler: broken_app.handler"))
    response = invoke("Fn", {}, template_path=broken)
    assert response["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module_here" in response["errorMessage"]


def test_environ_is_set_as_given(project: Path) -> None:
    response = invoke("Fn", {}, template_path=project, environ={"ANYTHING": "yes"})
    assert response["env"]["ANYTHING"] == "yes"
    assert "ANYTHING" not in os.environ


def test_the_caller_process_is_left_as_it_was(project: Path) -> None:
    environ, path = dict(os.environ), list(sys.path)
    invoke("Fn", {}, template_path=project)
    assert dict(os.environ) == environ
    assert sys.path == path
    assert "probe_app" not in sys.modules


def test_what_cannot_run_here_raises_invoke_error(project: Path) -> None:
    with pytest.raises(InvokeError, match="functions there: Fn, Other"):
        invoke("Missing", {}, template_path=project)
    with pytest.raises(InvokeError, match="only Python functions"):
        invoke("Other", {}, template_path=project)
    with pytest.raises(InvokeError, match=r"env\.json format"):
        invoke("Fn", {}, template_path=project, env_vars={"Fn": "not a mapping"})
    with pytest.raises(InvokeError, match="cannot read"):
        invoke("Fn", {}, template_path=project.parent / "nope.yaml")


def test_load_template_reads_short_forms(project: Path) -> None:
    template: dict[str, Any] = load_template(project)
    variables = template["Resources"]["Fn"]["Properties"]["Environment"]["Variables"]
    assert variables["REF_PARAM"] == {"Ref": "P1"}
    assert variables["GETATT_PROXY"] == {"Fn::GetAtt": ["Proxy", "Endpoint"]}
    assert variables["GETATT_LIST"] == {"Fn::GetAtt": ["Proxy", "DBProxyArn"]}
    assert variables["SUB_VARS"] == {"Fn::Sub": ["${x}/${P1}", {"x": {"Ref": "AWS::Partition"}}]}
    assert template["Conditions"]["NotProd"] == {"Fn::Not": [{"Condition": "IsProd"}]}


def _process_state(pid: int) -> str:
    """The state letter in /proc/PID/stat (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]
