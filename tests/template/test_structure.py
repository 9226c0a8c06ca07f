"""What a reviewer would otherwise check in template.yaml by eye: runtime and architecture,
layers, names, network, database, alarms and outputs. Who may do what (IAM, the API's
authorization, logs) is in test_security.py."""

from __future__ import annotations

import json
import pkgutil
import re
import tomllib
from typing import Any

import pytest

import lambda_db
from lambda_db.cli.invoke import load_function
from tests.template.conftest import REPO, TEMPLATE

FUNCTION = "AWS::Serverless::Function"
LAYER = "AWS::Serverless::LayerVersion"
#: Layer logical id -> (the Architecture value it serves, pip's name for the machine).
LAYERS = {"LambdaDbLayerArm64": ("arm64", "aarch64"), "LambdaDbLayerX86": ("x86_64", "x86_64")}


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][name]["Properties"]
    return properties


def function_env(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's declared variables, Globals merged in (the function's win)."""
    merged = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    merged.update(props(template, name).get("Environment", {}).get("Variables", {}))
    return merged


def _python_runtimes(names: Any) -> set[tuple[int, int]]:
    found = set()
    for name in names:
        match = re.fullmatch(r"python3\.(\d+)", str(name))
        if match:
            found.add((3, int(match.group(1))))
    return found


def _cfn_lint_lambda_runtimes() -> set[tuple[int, int]]:
    """The python runtimes cfn-lint's AWS::Lambda::Function schema accepts."""
    from cfnlint.schema.manager import PROVIDER_SCHEMA_MANAGER

    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", "AWS::Lambda::Function")
    runtime = schema.schema["properties"]["Runtime"]
    names = runtime.get("enum") or runtime.get("anyOf", [{}])[0].get("enum", [])
    return _python_runtimes(names)


def test_is_a_sam_template_on_the_newest_python_sam_and_cfn_lint_support(
    template: dict[str, Any],
) -> None:
    from samcli.lib.utils.architecture import SUPPORTED_RUNTIMES

    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    function_globals = template["Globals"]["Function"]
    supported = _python_runtimes(SUPPORTED_RUNTIMES)
    linted = _cfn_lint_lambda_runtimes()
    assert supported and linted
    newest = max(supported & linted)
    assert function_globals["Runtime"] == f"python{newest[0]}.{newest[1]}"
    assert function_globals["Tracing"] == "Active"
    assert function_globals["LoggingConfig"]["LogFormat"] == "JSON"
    for name, function in resources(template, FUNCTION).items():
        assert "Runtime" not in function["Properties"], name
        assert "Architectures" not in function["Properties"], name


#: The first SAM CLI release whose ``SUPPORTED_RUNTIMES`` names each runtime: checked in
#: the wheels (``pip download --no-deps aws-sam-cli==X``): 1.145.2 lacks python3.14,
#: 1.146.0 has it.
FIRST_SAM_CLI = {"python3.14": (1, 146, 0)}


def test_the_invoke_extra_and_the_classifiers_cover_the_runtime(template: dict[str, Any]) -> None:
    runtime = template["Globals"]["Function"]["Runtime"]
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    (sam,) = [r for r in project["optional-dependencies"]["invoke"] if r.startswith("aws-sam")]
    match = re.fullmatch(r"aws-sam-cli>=([0-9.]+)", sam)
    assert match, sam
    floor = tuple(int(part) for part in match.group(1).split("."))
    assert floor >= FIRST_SAM_CLI[runtime], f"{sam} allows a SAM CLI that cannot read {runtime}"
    version = runtime.removeprefix("python")
    assert f"Programming Language :: Python :: {version}" in project["classifiers"]


def test_architecture_is_a_parameter_arm64_by_default(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["Architecture"]
    assert parameter["Default"] == "arm64"
    assert parameter["AllowedValues"] == ["arm64", "x86_64"]
    function_globals = template["Globals"]["Function"]
    assert function_globals["Architectures"] == [{"Ref": "Architecture"}]
    assert function_globals["Layers"] == [
        {"Fn::If": ["IsArm64", {"Ref": "LambdaDbLayerArm64"}, {"Ref": "LambdaDbLayerX86"}]}
    ]
    assert template["Conditions"]["IsArm64"] == {"Fn::Equals": [{"Ref": "Architecture"}, "arm64"]}
    assert template["Conditions"]["IsX86"] == {"Fn::Equals": [{"Ref": "Architecture"}, "x86_64"]}


@pytest.mark.parametrize("layer_id", sorted(LAYERS))
def test_each_layer_is_built_by_the_makefile_for_its_architecture(
    template: dict[str, Any], layer_id: str
) -> None:
    architecture, machine = LAYERS[layer_id]
    layer = template["Resources"][layer_id]
    assert layer["Condition"] == {"arm64": "IsArm64", "x86_64": "IsX86"}[architecture]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert layer["Metadata"]["BuildArchitecture"] == architecture
    runtime = template["Globals"]["Function"]["Runtime"]
    assert layer["Properties"]["CompatibleRuntimes"] == [runtime]
    assert layer["Properties"]["CompatibleArchitectures"] == [architecture]
    makefile = (REPO / layer["Metadata"]["ContextPath"] / "Makefile").read_text()
    assert f"RUNTIME_PYTHON := {runtime.removeprefix('python')}" in makefile
    target = re.search(rf"^build-{layer_id}:\n\t(.+)$", makefile, re.MULTILINE)
    assert target is not None, f"no build-{layer_id} target"
    assert target.group(1).endswith(f"ARCH={machine}")
    assert set(resources(template, LAYER)) == set(LAYERS)


def _logger_names() -> list[str]:
    """Names of the loggers a function's process may log through."""
    names = [lambda_db.__name__]
    for module in pkgutil.walk_packages(lambda_db.__path__, prefix=f"{lambda_db.__name__}."):
        names.append(module.name)
    # Libraries the functions load, by their loggers' root names.
    names += ["psycopg2", "botocore", "urllib3", "aws_lambda_powertools", "sqlalchemy", "root"]
    return names


def test_powertools_service_names_are_fixed_and_hide_no_logger(template: dict[str, Any]) -> None:
    """Powertools' Logger filters the runtime's root handler against every logger whose
    name *contains* its service name: a service called ``db`` silences ``lambda_db.*``."""
    assert (
        "POWERTOOLS_SERVICE_NAME" not in template["Globals"]["Function"]["Environment"]["Variables"]
    )
    services = {}
    for name in resources(template, FUNCTION):
        service = function_env(template, name)["POWERTOOLS_SERVICE_NAME"]
        assert isinstance(service, str), f"{name}: a fixed name, not {service!r}"
        assert re.fullmatch(r"[a-z]+(-[a-z]+)+", service), service
        services[name] = service
    assert len(set(services.values())) == len(services), services
    loggers = _logger_names()
    assert "lambda_db.diagnostics" in loggers
    for service in services.values():
        hidden = [logger for logger in loggers if service in logger]
        assert not hidden, f"service {service!r} would hide {hidden}"


def test_lambda_db_dev_names_the_templates_functions_and_service(
    template: dict[str, Any],
) -> None:
    from lambda_db.cli import dev

    assert function_env(template, dev.SCHEMA_FUNCTION)["POWERTOOLS_SERVICE_NAME"] == (
        dev.SCHEMA_SERVICE
    )
    assert function_env(template, dev.REPORT_FUNCTION)["DB_USER"] == {"Ref": "ReportDbUser"}


def test_the_functions_own_modules_name_no_service(template: dict[str, Any]) -> None:
    # Powertools names a Logger() after its service; a module-level logging.getLogger
    # named like the service would be filtered out as its "child".
    for name in resources(template, FUNCTION):
        code = REPO / props(template, name)["CodeUri"]
        service = function_env(template, name)["POWERTOOLS_SERVICE_NAME"]
        for source in code.glob("*.py"):
            assert f'getLogger("{service}' not in source.read_text(), source


def test_target_group_is_default_and_borrow_timeout_beats_every_function_timeout(
    template: dict[str, Any],
) -> None:
    group = props(template, "ProxyTargetGroup")
    # After the secret is attached and the proxy may log in as the application role.
    assert template["Resources"]["ProxyTargetGroup"]["DependsOn"] == [
        "DatabaseSecretAttachment",
        "ProxyConnectPolicy",
    ]
    assert group["TargetGroupName"] == "default"
    assert group["DBProxyName"] == {"Ref": "Proxy"}
    assert group["DBInstanceIdentifiers"] == [{"Ref": "Database"}]
    pool = group["ConnectionPoolConfigurationInfo"]
    # No InitQuery: session defaults are role defaults (docs/deploy.md says why).
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


#: The rule that matches no traffic: declared inline, it replaces the allow-all egress
#: rule CloudFormation gives a group that declares none.
NO_EGRESS = {"IpProtocol": "-1", "CidrIp": "127.0.0.1/32"}


def test_every_security_group_declares_its_egress(template: dict[str, Any]) -> None:
    groups = resources(template, "AWS::EC2::SecurityGroup")
    assert set(groups) == {
        "FunctionSecurityGroup",
        "SchemaSetupSecurityGroup",
        "ProxySecurityGroup",
        "DatabaseSecurityGroup",
    }
    inline = {}
    for name, group in groups.items():
        rules = group["Properties"].get("SecurityGroupEgress")
        assert rules, f"{name}: no inline egress, so CloudFormation would allow all"
        inline[name] = [{k: v for k, v in r.items() if k != "Description"} for r in rules]
    assert inline == {
        "FunctionSecurityGroup": [NO_EGRESS],
        "ProxySecurityGroup": [NO_EGRESS],
        "DatabaseSecurityGroup": [NO_EGRESS],
        # The one way out: the schema setup's answer to CloudFormation (S3).
        "SchemaSetupSecurityGroup": [
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0"}
        ],
    }
    egress = {
        (r["GroupId"]["Ref"], r["DestinationSecurityGroupId"]["Ref"], r["FromPort"], r["ToPort"])
        for r in (
            e["Properties"] for e in resources(template, "AWS::EC2::SecurityGroupEgress").values()
        )
    }
    assert egress == {
        ("FunctionSecurityGroup", "ProxySecurityGroup", 5432, 5432),
        ("ProxySecurityGroup", "DatabaseSecurityGroup", 5432, 5432),
    }


def test_only_the_schema_setup_reaches_the_internet(transformed: dict[str, Any]) -> None:
    """SAM appends a function's SecurityGroupIds to the Globals' ones."""
    groups = {
        name: function["Properties"]["VpcConfig"]["SecurityGroupIds"]
        for name, function in resources(transformed, "AWS::Lambda::Function").items()
    }
    assert groups.pop("SchemaSetupFunction") == [
        {"Ref": "FunctionSecurityGroup"},
        {"Ref": "SchemaSetupSecurityGroup"},
    ]
    assert set(groups) == {
        "ItemsFunction",
        "StockFunction",
        "ConnectionReportFunction",
        "ItemImportFunction",
    }
    for name, ids in groups.items():
        assert ids == [{"Ref": "FunctionSecurityGroup"}], name


def test_database_is_private_encrypted_snapshotted_and_accepts_iam(
    template: dict[str, Any],
) -> None:
    resource = template["Resources"]["Database"]
    assert resource["DeletionPolicy"] == "Snapshot"
    assert resource["UpdateReplacePolicy"] == "Snapshot"
    db = resource["Properties"]
    assert db["Engine"] == "postgres"
    assert db["StorageEncrypted"] is True
    assert db["PubliclyAccessible"] is False
    assert db["EnableIAMDatabaseAuthentication"] is True
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


def test_parameter_group_sets_server_timeouts_tls_and_max_connections_only_when_asked(
    template: dict[str, Any],
) -> None:
    parameters = props(template, "DatabaseParameterGroup")["Parameters"]
    assert parameters == {
        "idle_in_transaction_session_timeout": {"Ref": "IdleInTransactionTimeoutMs"},
        "client_connection_check_interval": {"Ref": "ClientConnectionCheckIntervalMs"},
        "rds.force_ssl": "1",
        "max_connections": {
            "Fn::If": ["HasMaxConnections", {"Ref": "MaxConnections"}, {"Ref": "AWS::NoValue"}]
        },
    }
    check = template["Parameters"]["ClientConnectionCheckIntervalMs"]
    assert 0 < check["Default"] <= 5000
    max_connections = template["Parameters"]["MaxConnections"]
    assert max_connections["Default"] == ""
    assert "2x the default" in max_connections["Description"]
    assert "pooler" in max_connections["Description"]


def test_application_role_timeouts_end_before_the_api_function_does(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]
    items_timeout_ms = 1000 * props(template, "ItemsFunction").get(
        "Timeout", template["Globals"]["Function"]["Timeout"]
    )
    statement = parameters["AppStatementTimeoutMs"]
    lock = parameters["AppLockTimeoutMs"]
    assert 0 < lock["Default"] < statement["Default"] < items_timeout_ms
    assert statement["MinValue"] > 0 and lock["MinValue"] > 0  # 0 would mean "no timeout"
    idle = parameters["AppIdleInTransactionTimeoutMs"]
    assert idle["MinValue"] > 0 and idle["Default"] <= items_timeout_ms
    schema = props(template, "Schema")
    roles = ("AppUser", "ReportUser")
    assert {key: schema[key] for key in schema if key.endswith("Ms") or key in roles} == {
        "AppUser": {"Ref": "AppDbUser"},
        "ReportUser": {"Ref": "ReportDbUser"},
        "StatementTimeoutMs": {"Ref": "AppStatementTimeoutMs"},
        "LockTimeoutMs": {"Ref": "AppLockTimeoutMs"},
        "IdleInTransactionTimeoutMs": {"Ref": "AppIdleInTransactionTimeoutMs"},
    }


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
    env = function_env(template, "ConnectionReportFunction")
    # One namespace per stack: two stacks in a region do not mix their reports.
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Fn::Sub": "LambdaDb/${AWS::StackName}"}
    assert spec["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert spec["MetricName"] == "MaxConnectionUtilization"
    assert spec["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    source = (REPO / "functions/connection_report/connection_report.py").read_text()
    assert 'name="MaxConnectionUtilization"' in source


def test_failed_reports_land_in_a_queue_that_alarms(template: dict[str, Any]) -> None:
    config = props(template, "ConnectionReportFunction")["EventInvokeConfig"]
    assert config["MaximumRetryAttempts"] == 0
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["ReportFailureQueue", "Arn"]},
    }
    (event,) = props(template, "ConnectionReportFunction")["Events"].values()
    assert event["Type"] == "Schedule"
    queue = props(template, "ReportFailureQueue")
    assert queue["SqsManagedSseEnabled"] is True
    alarm = props(template, "ReportFailuresAlarm")
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["ReportFailureQueue", "QueueName"]}}
    ]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
    )


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert {"ApiUrl", "ApiInvokePolicyArn", "ProxyEndpoint", "DatabaseSecretArn"} <= set(outputs)
    assert outputs["ProxyEndpoint"]["Value"] == {"Fn::GetAtt": ["Proxy", "Endpoint"]}
    assert outputs["DatabaseSecretArn"]["Value"] == {"Ref": "DatabaseSecret"}
    assert outputs["ApiInvokePolicyArn"]["Value"] == {"Ref": "ApiInvokePolicy"}
    assert re.search(r"\$\{ItemsApi\}\.execute-api", outputs["ApiUrl"]["Value"]["Fn::Sub"])
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/Prod/items")


def test_schema_is_a_custom_resource_after_the_proxy_target(template: dict[str, Any]) -> None:
    schema = template["Resources"]["Schema"]
    assert schema["DependsOn"] == "ProxyTargetGroup"
    assert schema["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["SchemaSetupFunction", "Arn"]}


def test_events_name_the_properties_the_template_sends(template: dict[str, Any]) -> None:
    sent = set(props(template, "Schema")) - {"ServiceToken", "ServiceTimeout"}
    for name in ("schema-create.json", "schema-update.json", "schema-delete.json"):
        with (REPO / "events" / name).open() as f:
            event = json.load(f)
        assert set(event["ResourceProperties"]) - {"ServiceToken"} == sent, name


def test_env_json_overrides_only_declared_variables(template: dict[str, Any]) -> None:
    with (REPO / "events" / "env.json").open() as f:
        env = json.load(f)
    assert env["Parameters"]["DB_AUTH_MODE"] == "password"
    # Locally too, the functions log in as the application role and only the schema
    # setup as the master user.
    assert env["Parameters"]["DB_USER"] == "app_user"
    assert env["SchemaSetupFunction"]["DB_USER"] == "app_admin"
    assert env["SchemaSetupFunction"]["APP_DB_PASSWORD"] == env["Parameters"]["DB_PASSWORD"], (
        "the functions log in with the password the schema setup gives the role"
    )
    # The report logs in as its own role, with the password the schema setup gives it.
    report = env["ConnectionReportFunction"]
    assert report["DB_USER"] == "app_report"
    assert report["DB_PASSWORD"] == env["SchemaSetupFunction"]["REPORT_DB_PASSWORD"]
    for function in resources(template, FUNCTION):
        declared = set(load_function(function, template_path=TEMPLATE).environment)
        overridden = set(env["Parameters"]) | set(env.get(function, {}))
        assert overridden <= declared, (function, overridden - declared)
