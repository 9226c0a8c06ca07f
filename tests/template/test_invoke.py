"""lambda_db.cli.invoke against small templates: the environment SAM CLI would give the
function (compared with SAM CLI's own resolver), the context, and the cleanup."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lambda_db.cli.invoke import InvokeError, invoke, load_function, load_template

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
import time

CALLS = 0


def handler(event, context):
    global CALLS
    CALLS += 1
    action = event.get("action")
    if action == "fail":
        raise ValueError("asked to fail")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "unserializable":
        return {"value": object()}
    return {
        "env": dict(os.environ),
        "calls": CALLS,
        "remaining": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "request_id": context.aws_request_id,
        "path0": sys.path[0],
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
    assert {name: seen.get(name) for name in expected} == expected
    assert "UNDECLARED" not in seen
    assert (seen["FROM_ENV_JSON"], seen["FROM_PARAMETERS"], seen["FROM_SHELL"]) == (
        "function",
        "parameters",
        "shell",
    )
    assert seen["AWS_SAM_LOCAL"] == "true"


def test_intrinsics_resolve_to_sam_cli_placeholders(project: Path) -> None:
    env = load_function("Fn", template_path=project).environment
    assert env["REF_PARAM"] == "p1"
    assert env["REF_RESOURCE"] == "Bucket"
    assert env["GETATT_PROXY"] == ""  # unresolvable: blank, as sam local gives it
    assert env["SUB_ATTR"] == "$Proxy.Endpoint:5432"
    assert env["SELECT"] == "b"
    assert env["BOOL"] == "true"


def test_escapes_and_no_value_read_as_cloudformation_does(tmp_path: Path) -> None:
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
    assert env["ESCAPED"] == "${Literal}-us-east-1"  # SAM CLI: "${!Literal}-us-east-1"
    assert "REMOVED" not in env  # SAM CLI: ""


def test_context_counts_down_from_the_timeout(project: Path) -> None:
    response = invoke("Fn", {}, template_path=project)
    assert 6000 < response["remaining"] <= 7000
    assert (response["function_name"], response["memory"]) == ("Fn", 512)
    assert response["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:Fn"
    assert response["env"]["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7"
    assert response["env"]["AWS_LAMBDA_LOG_LEVEL"] == "WARN"


def test_every_call_is_a_cold_start_and_leaves_the_process_as_it_was(project: Path) -> None:
    environ, path = dict(os.environ), list(sys.path)
    first = invoke("Fn", {}, template_path=project)
    second = invoke("Fn", {}, template_path=project)
    assert (first["calls"], second["calls"]) == (1, 1)
    assert first["request_id"] != second["request_id"]
    assert first["path0"] == str(project.parent / "src")
    assert dict(os.environ) == environ
    assert sys.path == path
    assert "probe_app" not in sys.modules


def test_environ_is_set_as_given(project: Path) -> None:
    response = invoke("Fn", {}, template_path=project, environ={"ANYTHING": "yes"})
    assert response["env"]["ANYTHING"] == "yes"
    assert "ANYTHING" not in os.environ


def test_event_and_response_cross_json(project: Path) -> None:
    response = invoke("Fn", {"action": "unserializable"}, template_path=project)
    assert response["errorType"] == "Runtime.MarshalError"


def test_an_exception_is_lambdas_error_payload(project: Path) -> None:
    response = invoke("Fn", {"action": "fail"}, template_path=project)
    assert (response["errorType"], response["errorMessage"]) == ("ValueError", "asked to fail")
    assert any("probe_app.py" in frame for frame in response["stackTrace"])


def test_overrunning_the_timeout_is_lambdas_timeout_error(project: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    short.write_text(TEMPLATE.replace("Timeout: 7", "Timeout: 1"))
    response = invoke("Fn", {"action": "sleep", "seconds": 1.2}, template_path=short)
    assert response["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in response["errorMessage"]


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
