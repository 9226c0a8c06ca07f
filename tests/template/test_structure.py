"""What a reviewer would otherwise check in template.yaml by eye."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from lambda_db.cli.invoke import load_function
from tests.template.conftest import REPO, TEMPLATE

FUNCTION = "AWS::Serverless::Function"
PROXY_RESOURCE_ID = {
    "Fn::Select": [6, {"Fn::Split": [":", {"Fn::GetAtt": ["Proxy", "DBProxyArn"]}]}]
}
DB_USER_ARN = (
    "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}"
    ":dbuser:${ProxyResourceId}/${DbUser}"
)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][name]["Properties"]
    return properties


def test_is_a_sam_template_on_a_current_python(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] in ("python3.12", "python3.13")
    assert function_globals["Tracing"] == "Active"
    assert function_globals["LoggingConfig"]["LogFormat"] == "JSON"
    assert "POWERTOOLS_SERVICE_NAME" in function_globals["Environment"]["Variables"]
    for name, function in resources(template, FUNCTION).items():
        assert "Runtime" not in function["Properties"], name


def test_layer_is_built_for_the_functions_runtime(template: dict[str, Any]) -> None:
    layer = template["Resources"]["LambdaDbLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    runtime = template["Globals"]["Function"]["Runtime"]
    assert layer["Properties"]["CompatibleRuntimes"] == [runtime]
    makefile = (REPO / layer["Metadata"]["ContextPath"] / "Makefile").read_text()
    assert f"RUNTIME_PYTHON := {runtime.removeprefix('python')}" in makefile
    assert "PLATFORM := manylinux2014_x86_64" in makefile
    assert template["Globals"]["Function"]["Layers"] == [{"Ref": "LambdaDbLayer"}]


def test_proxy_requires_iam_and_tls(template: dict[str, Any]) -> None:
    proxy = props(template, "Proxy")
    assert proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["RequireTLS"] is True
    assert proxy["Auth"] == [
        {"AuthScheme": "SECRETS", "SecretArn": {"Ref": "DatabaseSecret"}, "IAMAuth": "REQUIRED"}
    ]
    assert proxy["IdleClientTimeout"] == {"Ref": "ProxyIdleClientTimeout"}
    assert proxy["VpcSecurityGroupIds"] == [{"Ref": "ProxySecurityGroup"}]


def test_proxy_role_reads_only_the_secret(template: dict[str, Any]) -> None:
    role = props(template, "ProxyRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "rds.amazonaws.com"}
    (policy,) = role["Policies"]
    read, decrypt = policy["PolicyDocument"]["Statement"]
    assert (read["Action"], read["Resource"]) == (
        "secretsmanager:GetSecretValue",
        {"Ref": "DatabaseSecret"},
    )
    assert decrypt["Action"] == "kms:Decrypt"
    assert decrypt["Condition"] == {
        "StringEquals": {
            "kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}
        }
    }


def test_target_group_is_default_and_borrow_timeout_beats_every_function_timeout(
    template: dict[str, Any],
) -> None:
    group = props(template, "ProxyTargetGroup")
    assert group["TargetGroupName"] == "default"
    assert group["DBProxyName"] == {"Ref": "Proxy"}
    assert group["DBInstanceIdentifiers"] == [{"Ref": "Database"}]
    pool = group["ConnectionPoolConfigurationInfo"]
    assert set(pool) == {
        "MaxConnectionsPercent",
        "MaxIdleConnectionsPercent",
        "ConnectionBorrowTimeout",
    }
    borrow = template["Parameters"][pool["ConnectionBorrowTimeout"]["Ref"]]
    timeouts = [
        function["Properties"].get("Timeout", template["Globals"]["Function"]["Timeout"])
        for function in resources(template, FUNCTION).values()
    ]
    assert borrow["Default"] <= borrow["MaxValue"] < min(timeouts)


def test_every_function_connects_as_one_user_through_the_proxy_and_nothing_else(
    template: dict[str, Any],
) -> None:
    function_env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert function_env["DB_AUTH_MODE"] == "iam"
    assert function_env["DB_HOST"] == {"Fn::GetAtt": ["Proxy", "Endpoint"]}
    assert function_env["DB_SSLMODE"] == "verify-full"
    assert "DB_SECRET_ARN" not in function_env
    functions = resources(template, FUNCTION)
    assert set(functions) == {"ItemsFunction", "ConnectionReportFunction", "SchemaSetupFunction"}
    for name, function in functions.items():
        (policy,) = function["Properties"]["Policies"]
        (statement,) = policy["Statement"]
        assert statement == {
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": {"Fn::Sub": [DB_USER_ARN, {"ProxyResourceId": PROXY_RESOURCE_ID}]},
        }, name
        own_env = function["Properties"].get("Environment", {}).get("Variables", {})
        assert not {"DB_AUTH_MODE", "DB_HOST", "DB_SECRET_ARN"} & set(own_env), name
    # Nothing but the proxy's role may read the secret.
    secret_readers = [
        name
        for name, resource in template["Resources"].items()
        if "secretsmanager:" in repr(resource.get("Properties", {}).get("Policies", ""))
    ]
    assert secret_readers == ["ProxyRole"]


def test_ingress_is_chained_function_proxy_database_on_5432_only(
    template: dict[str, Any],
) -> None:
    for group in resources(template, "AWS::EC2::SecurityGroup").values():
        assert "SecurityGroupIngress" not in group["Properties"]  # only the rules below
    rules = [
        r["Properties"] for r in resources(template, "AWS::EC2::SecurityGroupIngress").values()
    ]
    for rule in rules:
        assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule), rule
    chain = {
        (
            r["GroupId"]["Ref"],
            r["SourceSecurityGroupId"]["Ref"],
            r["IpProtocol"],
            r["FromPort"],
            r["ToPort"],
        )
        for r in rules
    }
    assert chain == {
        ("ProxySecurityGroup", "FunctionSecurityGroup", "tcp", 5432, 5432),
        ("DatabaseSecurityGroup", "ProxySecurityGroup", "tcp", 5432, 5432),
    }
    assert template["Globals"]["Function"]["VpcConfig"]["SecurityGroupIds"] == [
        {"Ref": "FunctionSecurityGroup"}
    ]
    assert props(template, "Database")["VPCSecurityGroups"] == [{"Ref": "DatabaseSecurityGroup"}]


def test_open_egress_is_only_https_from_the_functions(template: dict[str, Any]) -> None:
    for name, group in resources(template, "AWS::EC2::SecurityGroup").items():
        for rule in group["Properties"].get("SecurityGroupEgress", []):
            if rule.get("CidrIp") == "0.0.0.0/0":
                assert name == "FunctionSecurityGroup"
                assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443)


def test_database_is_private_encrypted_and_snapshotted(template: dict[str, Any]) -> None:
    resource = template["Resources"]["Database"]
    assert resource["DeletionPolicy"] == "Snapshot"
    assert resource["UpdateReplacePolicy"] == "Snapshot"
    db = resource["Properties"]
    assert db["Engine"] == "postgres"
    assert db["StorageEncrypted"] is True
    assert db["PubliclyAccessible"] is False
    assert db["DBInstanceClass"] == {"Ref": "DbInstanceClass"}
    assert template["Parameters"]["DbInstanceClass"]["Default"] == "db.t4g.micro"
    assert int(template["Parameters"]["DbEngineMajorVersion"]["Default"]) >= 17
    assert db["MasterUserPassword"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"
    }
    attachment = props(template, "DatabaseSecretAttachment")
    assert attachment == {
        "SecretId": {"Ref": "DatabaseSecret"},
        "TargetId": {"Ref": "Database"},
        "TargetType": "AWS::RDS::DBInstance",
    }


def test_secret_password_is_generated_without_characters_rds_refuses(
    template: dict[str, Any],
) -> None:
    generate = props(template, "DatabaseSecret")["GenerateSecretString"]
    assert generate["GenerateStringKey"] == "password"
    assert generate["PasswordLength"] >= 16
    for char in '"@/ ':
        assert char in generate["ExcludeCharacters"]


def test_parameter_group_sets_idle_timeout_and_max_connections_only_when_asked(
    template: dict[str, Any],
) -> None:
    condition, with_max, without_max = props(template, "DatabaseParameterGroup")["Parameters"][
        "Fn::If"
    ]
    assert condition == "HasMaxConnections"
    assert with_max == {
        "idle_in_transaction_session_timeout": {"Ref": "IdleInTransactionTimeoutMs"},
        "max_connections": {"Ref": "MaxConnections"},
    }
    assert without_max == {
        "idle_in_transaction_session_timeout": {"Ref": "IdleInTransactionTimeoutMs"}
    }
    max_connections = template["Parameters"]["MaxConnections"]
    assert max_connections["Default"] == ""
    assert "2x the default" in max_connections["Description"]
    assert "pooler" in max_connections["Description"]


def test_reserved_concurrency_is_optional_and_explained(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["ReservedConcurrency"]
    assert parameter["Default"] == ""
    assert "max_connections" in parameter["Description"]
    assert props(template, "ItemsFunction")["ReservedConcurrentExecutions"] == {
        "Fn::If": [
            "HasReservedConcurrency",
            {"Ref": "ReservedConcurrency"},
            {"Ref": "AWS::NoValue"},
        ]
    }


def test_database_connections_alarm_is_at_80_percent_of_max_connections(
    template: dict[str, Any],
) -> None:
    alarm = props(template, "DatabaseConnectionsAlarm")
    assert alarm["Threshold"] == 80
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    metric, utilization = alarm["Metrics"]
    stat = metric["MetricStat"]["Metric"]
    assert (stat["Namespace"], stat["MetricName"]) == ("AWS/RDS", "DatabaseConnections")
    assert stat["Dimensions"] == [{"Name": "DBInstanceIdentifier", "Value": {"Ref": "Database"}}]
    expression, variables = utilization["Expression"]["Fn::Sub"]
    assert expression == f"100 * {metric['Id']} / ${{MaxConnectionsValue}}"
    assert variables["MaxConnectionsValue"] == {
        "Fn::If": [
            "HasMaxConnections",
            {"Ref": "MaxConnections"},
            {"Ref": "ExpectedMaxConnections"},
        ]
    }
    assert utilization["ReturnData"] is True
    assert metric["ReturnData"] is False


@pytest.mark.parametrize(
    ("alarm", "metric"),
    [
        ("ProxyClientConnectionsAlarm", "ClientConnections"),
        ("ProxyBorrowLatencyAlarm", "DatabaseConnectionsBorrowLatency"),
    ],
)
def test_proxy_alarms_watch_the_proxy(template: dict[str, Any], alarm: str, metric: str) -> None:
    spec = props(template, alarm)
    assert (spec["Namespace"], spec["MetricName"]) == ("AWS/RDS", metric)
    assert spec["Dimensions"] == [{"Name": "ProxyName", "Value": {"Ref": "Proxy"}}]
    assert spec["Threshold"]["Ref"] in template["Parameters"]


def test_report_alarm_watches_what_the_report_function_publishes(template: dict[str, Any]) -> None:
    spec = props(template, "ConnectionUtilizationAlarm")
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert spec["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert spec["MetricName"] == "MaxConnectionUtilization"
    assert spec["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    source = (REPO / "functions/connection_report/connection_report.py").read_text()
    assert 'name="MaxConnectionUtilization"' in source


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert {"ApiUrl", "ProxyEndpoint", "DatabaseSecretArn"} <= set(outputs)
    assert outputs["ProxyEndpoint"]["Value"] == {"Fn::GetAtt": ["Proxy", "Endpoint"]}
    assert outputs["DatabaseSecretArn"]["Value"] == {"Ref": "DatabaseSecret"}
    assert re.search(r"\$\{ServerlessRestApi\}\.execute-api", outputs["ApiUrl"]["Value"]["Fn::Sub"])


def test_schema_is_a_custom_resource_after_the_proxy_target(template: dict[str, Any]) -> None:
    schema = template["Resources"]["Schema"]
    assert schema["DependsOn"] == "ProxyTargetGroup"
    assert schema["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["SchemaSetupFunction", "Arn"]}


def test_env_json_overrides_only_declared_variables() -> None:
    with (REPO / "events" / "env.json").open() as f:
        env = json.load(f)
    assert env["Parameters"]["DB_AUTH_MODE"] == "password"
    for function in ("ItemsFunction", "ConnectionReportFunction", "SchemaSetupFunction"):
        declared = set(load_function(function, template_path=TEMPLATE).environment)
        overridden = set(env["Parameters"]) | set(env.get(function, {}))
        assert overridden <= declared, (function, overridden - declared)
