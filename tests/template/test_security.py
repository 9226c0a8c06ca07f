"""Who may do what in the stack: the API's callers, the functions' database users, the
proxy, and where every log goes. Checked on template.yaml and, where SAM generates the
resources (API methods, roles, stages), on the SAM-transformed template."""

from __future__ import annotations

from typing import Any

import pytest

from tests.template.conftest import FUNCTIONS, TEMPLATE
from tests.template.test_structure import FUNCTION, function_env, props, resources

PROXY_RESOURCE_ID = {
    "Fn::Select": [6, {"Fn::Split": [":", {"Fn::GetAtt": ["Proxy", "DBProxyArn"]}]}]
}


def db_user_arn(user_parameter: str) -> dict[str, Any]:
    """``rds-db:connect`` on the proxy, as one database user (a template parameter)."""
    arn = (
        "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}"
        f":dbuser:${{ProxyResourceId}}/${{{user_parameter}}}"
    )
    return {"Fn::Sub": [arn, {"ProxyResourceId": PROXY_RESOURCE_ID}]}


# ---------------------------------------------------------------- the API


def test_every_api_method_requires_iam_sigv4(transformed: dict[str, Any]) -> None:
    body = transformed["Resources"]["ItemsApi"]["Properties"]["Body"]
    assert body["securityDefinitions"]["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    methods = [
        (path, method, spec)
        for path, operations in body["paths"].items()
        for method, spec in operations.items()
    ]
    assert {(path, method) for path, method, _ in methods} == {
        ("/items", "get"),
        ("/items", "post"),
        ("/items/{id}", "get"),
        ("/items/{id}", "put"),
        ("/items/{id}", "delete"),
        ("/items/{id}/stock", "get"),
        ("/items/{id}/stock", "post"),
    }
    for path, method, spec in methods:
        assert spec["security"] == [{"AWS_IAM": []}], (path, method)
        # API Gateway calls the function through the function's resource policy, not
        # with the caller's credentials (which would need lambda:InvokeFunction too).
        assert "credentials" not in spec["x-amazon-apigateway-integration"], (path, method)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # samtranslator's own
def test_sam_cli_sees_every_api_event_authorized() -> None:
    # The check behind `sam deploy --guided`'s "has no authentication. Is this okay?".
    from samcli.commands.deploy.auth_utils import auth_per_resource
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

    stacks, _ = SamLocalStackProvider.get_stacks(str(TEMPLATE))
    verdicts = auth_per_resource(stacks)
    assert len(verdicts) == 7
    assert all(authorized for _, authorized in verdicts), verdicts


def test_api_events_all_use_the_protected_api(template: dict[str, Any]) -> None:
    api_events = [
        event
        for function in resources(template, FUNCTION).values()
        for event in function["Properties"].get("Events", {}).values()
        if event["Type"] == "Api"
    ]
    assert len(api_events) == 7
    for event in api_events:
        assert event["Properties"]["RestApiId"] == {"Ref": "ItemsApi"}
    assert not resources(template, "AWS::Serverless::HttpApi")


def test_api_stage_is_throttled_traced_and_access_logged(transformed: dict[str, Any]) -> None:
    (stage,) = resources(transformed, "AWS::ApiGateway::Stage").values()
    settings = stage["Properties"]
    (throttling,) = settings["MethodSettings"]
    assert (throttling["ResourcePath"], throttling["HttpMethod"]) == ("/*", "*")
    assert throttling["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert throttling["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert settings["TracingEnabled"] is True
    access = settings["AccessLogSetting"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    for variable in ("$context.requestId", "$context.identity.userArn", "$context.status"):
        assert variable in access["Format"]


def test_access_logging_role_outlives_the_stack(template: dict[str, Any]) -> None:
    role = template["Resources"]["ApiGatewayCloudWatchRole"]
    # The account-wide API Gateway setting points at it: deleting it would break the
    # logging of every other API in the account and region.
    assert (role["DeletionPolicy"], role["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert props(template, "ApiGatewayAccount")["CloudWatchRoleArn"] == {
        "Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]
    }
    assert template["Resources"]["ItemsApi"]["DependsOn"] == "ApiGatewayAccount"


def test_invoke_policy_allows_calling_this_api_only(template: dict[str, Any]) -> None:
    (statement,) = props(template, "ApiInvokePolicy")["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "execute-api:Invoke"
    prefix = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${ItemsApi}"
    assert statement["Resource"] == [
        {"Fn::Sub": f"{prefix}/Prod/*/items"},
        {"Fn::Sub": f"{prefix}/Prod/*/items/*"},
    ]


# ---------------------------------------------------------------- database users


def test_functions_log_in_as_their_roles_and_only_the_schema_setup_as_master(
    template: dict[str, Any],
) -> None:
    functions = resources(template, FUNCTION)
    assert set(functions) == FUNCTIONS
    expected_user = {
        "ItemsFunction": "AppDbUser",
        "StockFunction": "AppDbUser",
        "ConnectionReportFunction": "ReportDbUser",
        "SchemaSetupFunction": "DbUser",
        "ItemImportFunction": "AppDbUser",
    }
    for name, function in functions.items():
        env = function_env(template, name)
        assert env["DB_AUTH_MODE"] == "iam", name
        assert env["DB_HOST"] == {"Fn::GetAtt": ["Proxy", "Endpoint"]}, name
        assert env["DB_SSLMODE"] == "verify-full", name
        assert "DB_SECRET_ARN" not in env, name
        assert env["DB_USER"] == {"Ref": expected_user[name]}, name
        # rds-db:connect names that user, on this proxy, and nothing else.
        (policy,) = function["Properties"]["Policies"]
        statement, *others = policy["Statement"]
        assert [o["Action"] for o in others] == (
            [["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]]
            if name == "ItemImportFunction"
            else []
        ), name
        assert statement == {
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": db_user_arn(expected_user[name]),
        }, name
    assert (
        template["Parameters"]["AppDbUser"]["Default"]
        != (template["Parameters"]["DbUser"]["Default"])
    )
    defaults = {
        template["Parameters"][p]["Default"] for p in ("DbUser", "AppDbUser", "ReportDbUser")
    }
    assert len(defaults) == 3
    (assertion,) = template["Rules"]["AppRoleIsNotTheMasterUser"]["Assertions"]
    assert assertion["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AppDbUser"}, {"Ref": "DbUser"}]}]
    }
    assert [a["Assert"] for a in template["Rules"]["ReportRoleIsItsOwn"]["Assertions"]] == [
        {"Fn::Not": [{"Fn::Equals": [{"Ref": "ReportDbUser"}, {"Ref": other}]}]}
        for other in ("DbUser", "AppDbUser")
    ]


def test_local_only_password_variables_are_empty_in_aws(template: dict[str, Any]) -> None:
    env = function_env(template, "SchemaSetupFunction")
    assert env["APP_DB_PASSWORD"] == ""
    assert env["REPORT_DB_PASSWORD"] == ""
    assert env["DB_PASSWORD"] == ""
    for name in resources(template, FUNCTION):
        if name != "SchemaSetupFunction":
            env = function_env(template, name)
            assert not {"APP_DB_PASSWORD", "REPORT_DB_PASSWORD"} & set(env), name


def test_proxy_uses_end_to_end_iam_for_the_app_role_and_the_secret_for_master_only(
    template: dict[str, Any],
) -> None:
    proxy = props(template, "Proxy")
    assert proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["RequireTLS"] is True
    assert proxy["DefaultAuthScheme"] == "IAM_AUTH"
    (auth,) = proxy["Auth"]
    assert auth == {
        "AuthScheme": "SECRETS",
        "SecretArn": {"Ref": "DatabaseSecret"},
        "IAMAuth": "REQUIRED",
        "Description": "Master user, for the schema setup only",
    }
    assert proxy["IdleClientTimeout"] == {"Ref": "ProxyIdleClientTimeout"}
    assert proxy["VpcSecurityGroupIds"] == [{"Ref": "ProxySecurityGroup"}]


def test_proxy_role_reads_the_master_secret_and_logs_in_as_the_two_roles_only(
    template: dict[str, Any],
) -> None:
    role = props(template, "ProxyRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "rds.amazonaws.com"}
    (secret,) = role["Policies"]
    # No kms:Decrypt (on key/* it named every key of the account): the secret uses the
    # AWS managed key, whose key policy serves Secrets Manager's callers.
    (read,) = secret["PolicyDocument"]["Statement"]
    assert (read["Effect"], read["Action"], read["Resource"]) == (
        "Allow",
        "secretsmanager:GetSecretValue",
        {"Ref": "DatabaseSecret"},
    )
    assert "KmsKeyId" not in props(template, "DatabaseSecret")
    policies = [
        repr(resource["Properties"].get(key, ""))
        for resource in template["Resources"].values()
        for key in ("Policies", "PolicyDocument")
    ]
    assert not [p for p in policies if "kms:" in p]  # no role of the stack may use a key
    connect = props(template, "ProxyConnectPolicy")
    assert connect["RoleName"] == {"Ref": "ProxyRole"}
    (statement,) = connect["PolicyDocument"]["Statement"]
    assert statement["Action"] == "rds-db:connect"
    # The instance's resource id (db-...), not the proxy's: this is the proxy's own login.
    assert statement["Resource"] == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}"
            f":dbuser:${{Database.DbiResourceId}}/${{{user}}}"
        }
        for user in ("AppDbUser", "ReportDbUser")
    ]


def test_nothing_but_the_proxy_reads_the_secret(transformed: dict[str, Any]) -> None:
    readers = [
        name
        for name, resource in transformed["Resources"].items()
        if "secretsmanager:" in repr(resource.get("Properties", {}).get("Policies", ""))
        or "secretsmanager:" in repr(resource.get("Properties", {}).get("PolicyDocument", ""))
    ]
    # ...and nothing but the proxy may log in to the database as the application role.
    connect = [
        name
        for name, resource in resources(transformed, "AWS::IAM::RolePolicy").items()
        if "rds-db:connect" in repr(resource["Properties"]["PolicyDocument"])
    ]
    assert connect == ["ProxyConnectPolicy"]
    assert readers == ["ProxyRole"]


def test_function_roles_hold_only_what_they_use(transformed: dict[str, Any]) -> None:
    roles = {
        name: resource
        for name, resource in resources(transformed, "AWS::IAM::Role").items()
        if name.endswith("FunctionRole")
    }
    assert set(roles) == {
        "ItemsFunctionRole",
        "StockFunctionRole",
        "ConnectionReportFunctionRole",
        "SchemaSetupFunctionRole",
        "ItemImportFunctionRole",
    }
    for name, role in roles.items():
        actions = {
            action
            for policy in role["Properties"].get("Policies", [])
            for statement in policy["PolicyDocument"]["Statement"]
            for action in (
                statement["Action"]
                if isinstance(statement["Action"], list)
                else [statement["Action"]]
            )
        }
        expected = {"rds-db:connect"}
        if name == "ConnectionReportFunctionRole":
            expected.add("sqs:SendMessage")  # its on-failure destination
        if name == "ItemImportFunctionRole":  # its event source mapping, on its queue
            expected |= {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
        assert actions == expected, name
        managed = {str(arn).rsplit("/", 1)[-1] for arn in role["Properties"]["ManagedPolicyArns"]}
        assert managed == {
            "AWSLambdaBasicExecutionRole",
            "AWSLambdaVPCAccessExecutionRole",
            "AWSXrayWriteOnlyAccess",
        }, name


# ---------------------------------------------------------------- logs


def test_every_log_group_is_declared_with_a_retention(transformed: dict[str, Any]) -> None:
    groups = resources(transformed, "AWS::Logs::LogGroup")
    assert set(groups) == {
        "ItemsLogGroup",
        "StockLogGroup",
        "ConnectionReportLogGroup",
        "SchemaSetupLogGroup",
        "ItemImportLogGroup",
        "ApiAccessLogGroup",
        "ProxyLogGroup",
    }
    for name, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
    for name, function in resources(transformed, "AWS::Lambda::Function").items():
        target = function["Properties"]["LoggingConfig"]["LogGroup"]
        assert target["Ref"] in groups, name
    # No execution logging: API Gateway would create its own group, without retention.
    (stage,) = resources(transformed, "AWS::ApiGateway::Stage").values()
    for setting in stage["Properties"]["MethodSettings"]:
        assert setting.get("LoggingLevel", "OFF") == "OFF"


def test_the_proxys_log_group_exists_before_the_proxy(template: dict[str, Any]) -> None:
    group = props(template, "ProxyLogGroup")
    # RDS Proxy writes to /aws/rds/proxy/PROXY_NAME (docs/deploy.md: where that comes from).
    assert props(template, "Proxy")["DBProxyName"] == {"Fn::Sub": "${AWS::StackName}-proxy"}
    assert group["LogGroupName"] == {"Fn::Sub": "/aws/rds/proxy/${AWS::StackName}-proxy"}
    # Created first, so that the proxy never creates it without a retention period.
    assert template["Resources"]["Proxy"]["DependsOn"] == "ProxyLogGroup"


def test_log_retention_is_a_valid_cloudwatch_value(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["LogRetentionDays"]
    assert parameter["Default"] in parameter["AllowedValues"]
    assert 0 < parameter["Default"] <= 365
