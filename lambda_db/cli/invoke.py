"""``lambda-db invoke``: run a template's function the way Lambda runs it, without Docker.

The template is read by SAM CLI's own code (``SamLocalStackProvider``,
``SamFunctionProvider`` and ``LocalLambdaRunner.get_invoke_config``): ``Handler``,
``CodeUri``, ``Runtime``, ``Timeout``, ``MemorySize``, ``LoggingConfig`` and
``Environment`` with ``Globals`` merged, intrinsics resolved, and an env.json
(``--env-vars``) overriding only the variables the function declares, exactly as
``sam local invoke`` computes them. The function then runs under the real runtime
interface client, ``awslambdaric``, against a Runtime API on 127.0.0.1
(:mod:`lambda_db_lab.runtime_api`): init once, warm across the events of one run and
frozen (SIGSTOP) between them, the deadline starting when the event is handed out, the
runtime's own context object and marshalling.

Example::

    import json
    from lambda_db.cli.invoke import LocalFunction

    env_vars = json.load(open("env.local.json"))
    with LocalFunction("ItemsFunction", env_vars=env_vars) as function:
        created = function.invoke(json.load(open("events/items-create.json")))
        listed = function.invoke(json.load(open("events/items-list.json")))   # warm
    print(created.payload["statusCode"], listed.payload["statusCode"])

What differs from Lambda and from ``sam local invoke``: the handler runs under this
interpreter and its installed packages (the template's layers are not loaded; a function
whose ``Runtime`` names another Python version runs on this one), on this machine's
network. Variables the runtime itself sets follow Lambda, not SAM CLI's placeholders:
``AWS_LAMBDA_LOG_GROUP_NAME`` is ``/aws/lambda/NAME``, ``AWS_LAMBDA_LOG_STREAM_NAME`` a
stream name of Lambda's form, ``AWS_EXECUTION_ENV`` names the runtime.

Installing: the runtime client and SAM CLI come with the ``invoke`` extra
(``pip install 'lambda-db[invoke]'``), not with ``cli``, which stays light.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib.util
import json
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambda_db.cli._connection import CommandError, UsageError
from lambda_db.cli._signals import sigterm_interrupts
from lambda_db.errors import LambdaDbError

__all__ = [
    "FunctionConfig",
    "InvokeError",
    "LocalFunction",
    "add_parser",
    "invoke",
    "load_function",
    "load_template",
    "run",
]

logger = logging.getLogger(__name__)

#: What ``pip install`` needs for this command.
INSTALL_HINT = "pip install 'lambda-db[invoke]' (awslambdaric and aws-sam-cli)"


class InvokeError(LambdaDbError):
    """The function cannot be run locally: not in the template, not Python, bad env.json."""


@dataclass(frozen=True)
class FunctionConfig:
    """What ``sam local invoke`` takes from the template for one function."""

    logical_id: str
    handler: str
    code_uri: Path
    runtime: str
    timeout: float
    memory_size: int
    #: The declared environment variables, intrinsics resolved, before any override.
    environment: Mapping[str, str]
    #: Every variable the function gets: SAM CLI's (``AWS_*``, declared ones with the
    #: shell's and env.json's overrides), then the runtime's.
    variables: Mapping[str, str]

    @property
    def function_arn(self) -> str:
        """``context.invoked_function_arn``, in SAM CLI's placeholder account and region."""
        region = self.variables.get("AWS_REGION", "us-east-1")
        account = self.variables.get("AWS_ACCOUNT_ID", "123456789012")
        return f"arn:aws:lambda:{region}:{account}:function:{self.logical_id}"


def _samcli() -> Any:
    """SAM CLI's modules, or :class:`InvokeError` saying how to install them."""
    try:
        from samcli.commands.local.lib import local_lambda
    except ImportError as exc:
        raise InvokeError(f"lambda-db invoke needs SAM CLI's library: {INSTALL_HINT}") from exc
    return local_lambda


def load_template(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a CloudFormation/SAM template with SAM CLI's parser (short forms as long forms).

    ``!Ref X`` reads as ``{"Ref": "X"}``, ``!GetAtt A.B`` as ``{"Fn::GetAtt": ["A", "B"]}``.
    """
    _samcli()
    import yaml  # SAM CLI's parser is PyYAML's, with CloudFormation's tags
    from samcli.yamlhelper import yaml_parse

    path = Path(path)
    try:
        template = yaml_parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvokeError(f"cannot read the template {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvokeError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise InvokeError(f"{path} is not a CloudFormation template (no Resources)")
    return dict(template)


def load_function(
    function_logical_id: str,
    *,
    template_path: str | os.PathLike[str] = "template.yaml",
    env_vars: Mapping[str, Any] | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
) -> FunctionConfig:
    """Read one function as ``sam local invoke`` does (SAM CLI's code), with ``env_vars``
    (the ``--env-vars`` format: ``{"Parameters": {...}, "LogicalId": {...}}``) applied."""
    local_lambda = _samcli()
    from samcli.commands.exceptions import UserException
    from samcli.commands.local.lib.exceptions import OverridesNotWellDefinedError
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
    from samcli.local.lambdafn.env_vars import EnvironmentVariables
    from samcli.local.lambdafn.exceptions import FunctionNotFound

    path = Path(template_path).resolve()
    load_template(path)  # a clear error for a missing or malformed file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # samtranslator's, not ours
        try:
            stacks, _ = SamLocalStackProvider.get_stacks(
                str(path), parameter_overrides=dict(parameter_overrides or {})
            )
            provider = SamFunctionProvider(stacks)
            runner = local_lambda.LocalLambdaRunner(
                local_runtime=None,  # SAM CLI's Docker runtime: not used, we run awslambdaric
                function_provider=provider,
                cwd=str(path.parent),
                real_path=str(path.parent),
                env_vars_values=dict(env_vars or {}),
            )
            try:
                function = runner.get_function(function_logical_id)
            except FunctionNotFound as exc:
                names = sorted(f.name for f in provider.get_all())
                raise InvokeError(
                    f"{function_logical_id!r} is not a function in {path}; "
                    f"functions there: {', '.join(names) or 'none'}"
                ) from exc
            if not str(function.runtime or "").startswith("python"):
                raise InvokeError(
                    f"{function_logical_id} runs on {function.runtime!r}; only Python functions "
                    "run under awslambdaric"
                )
            config = runner.get_invoke_config(function)
            variables: dict[str, str] = config.env_vars.resolve()
        except OverridesNotWellDefinedError as exc:
            raise InvokeError(
                f"the env vars file is not in the env.json format "
                f'({{"Parameters": {{...}}, "FunctionLogicalId": {{...}}}}): {exc}'
            ) from exc
        except UserException as exc:
            raise InvokeError(f"SAM CLI cannot read {path}: {exc}") from exc
    declared = (function.environment or {}).get("Variables") or {}
    defaults = EnvironmentVariables(
        function.name,
        function.memory,
        function.timeout,
        function.handler,
        function.logging_config,
        variables=declared,
        shell_env_values={},
        override_values={},
    ).resolve()
    return FunctionConfig(
        logical_id=function.name,
        handler=str(function.handler),
        code_uri=Path(config.code_abs_path),
        runtime=str(function.runtime),
        timeout=float(config.timeout),
        memory_size=int(config.memory),
        environment={name: defaults[name] for name in declared},
        variables={**variables, **_runtime_variables(function.name, str(function.runtime))},
    )


def _runtime_variables(name: str, runtime: str) -> dict[str, str]:
    """What Lambda's runtime sets beside the function's own variables (where SAM CLI
    writes placeholders, Lambda's forms)."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y/%m/%d")
    return {
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[$LATEST]{uuid.uuid4().hex}",
        "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent),
    }


class LocalFunction:
    """One execution environment of a template's function, warm across :meth:`invoke`
    calls and frozen between them; closed by :meth:`close` (or the ``with`` block).

    * ``env_vars``: overrides in ``sam local invoke --env-vars`` format;
    * ``parameter_overrides``: template parameter values (``--parameter-overrides``);
    * ``environ``: extra variables set as given, declared or not (applied last).

    :class:`InvokeError` when the function cannot be found or is not Python.
    """

    def __init__(
        self,
        function_logical_id: str,
        *,
        template_path: str | os.PathLike[str] = "template.yaml",
        env_vars: Mapping[str, Any] | None = None,
        parameter_overrides: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = load_function(
            function_logical_id,
            template_path=template_path,
            env_vars=env_vars,
            parameter_overrides=parameter_overrides,
        )
        if importlib.util.find_spec("awslambdaric") is None:  # the environment's runtime
            raise InvokeError(f"lambda-db invoke needs awslambdaric: {INSTALL_HINT}")
        from lambda_db_lab.runtime_api import ExecutionEnvironment

        if not self.config.code_uri.is_dir():
            raise InvokeError(f"CodeUri {self.config.code_uri} is not a directory")
        self.environment = ExecutionEnvironment(
            self.config.handler,
            code_dir=self.config.code_uri,
            environ={**self.config.variables, **(environ or {})},
            timeout=self.config.timeout,
            function_arn=self.config.function_arn,
        )

    def __enter__(self) -> LocalFunction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def invoke(self, event: Any) -> Any:
        """Invoke with ``event``; the :class:`~lambda_db_lab.runtime_api.Result`
        (``payload``: the response or Lambda's error payload; ``ok``; ``error_type``)."""
        return self.environment.invoke(event)

    def close(self) -> None:
        """End the environment (its connections close with the process)."""
        self.environment.close()


_left_open: list[LocalFunction] = []


def _close_left_open() -> None:
    while _left_open:
        _left_open.pop().close()


atexit.register(_close_left_open)


def invoke(
    function_logical_id: str,
    event: Any,
    *,
    template_path: str | os.PathLike[str] = "template.yaml",
    env_vars: Mapping[str, Any] | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    close_connections: bool = True,
) -> Any:
    """Invoke one function once, in a new environment; return its response or Lambda's
    error payload (a handler exception or timeout is returned, not raised).

    ``close_connections=False`` leaves the environment alive and frozen, its connection
    open, as Lambda leaves it (to look at what the invocation left behind), until the
    next call of this function or the end of the process.
    """
    _close_left_open()
    function = LocalFunction(
        function_logical_id,
        template_path=template_path,
        env_vars=env_vars,
        parameter_overrides=parameter_overrides,
        environ=environ,
    )
    try:
        payload = function.invoke(event).payload
    finally:
        if close_connections:
            function.close()
        else:
            _left_open.append(function)
    return payload


# -- command line ----------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``invoke`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "invoke",
        help="run a template's function locally under the Lambda runtime client, no Docker",
        description="Invoke FUNCTION_LOGICAL_ID of a SAM template under awslambdaric: "
        "handler, CodeUri, Timeout and Environment as sam local invoke reads them, "
        "--env-vars overrides in SAM's env.json format. Several --event files run one "
        "after the other in one warm environment, frozen between them. Prints each "
        "response on one line; the function's output goes to stderr.",
    )
    parser.add_argument("function", metavar="FUNCTION_LOGICAL_ID")
    parser.add_argument(
        "--event",
        "-e",
        action="append",
        required=True,
        metavar="FILE",
        help="an event, a JSON file ('-' for standard input); repeat for several",
    )
    parser.add_argument(
        "--env-vars",
        "-n",
        metavar="FILE",
        help="JSON: {FunctionLogicalId: {VAR: value}, Parameters: {...}}",
    )
    parser.add_argument(
        "--template",
        "-t",
        default="template.yaml",
        metavar="FILE",
        help="the SAM template (default %(default)s)",
    )
    parser.add_argument(
        "--parameter-overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter values, as sam's ParameterKey=K,ParameterValue=V or K=V",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Invoke once per event in one warm environment; exit 1 if any returned an error."""
    overrides = _parse_overrides(args.parameter_overrides)
    events = [_read_json(name, "event") for name in args.event]
    env_vars = _read_json(args.env_vars, "env vars") if args.env_vars else None
    if env_vars is not None and not isinstance(env_vars, dict):
        raise CommandError(f"{args.env_vars} must hold a JSON object (the env.json format)")
    # SIGTERM (timeout, kill) closes the environment as Ctrl-C does; the runtime also dies
    # with this process whatever kills it (lambda_db_lab.runtime_api: PR_SET_PDEATHSIG).
    try:
        with (
            sigterm_interrupts(),
            LocalFunction(
                args.function,
                template_path=args.template,
                env_vars=env_vars,
                parameter_overrides=overrides,
            ) as function,
        ):
            failed = False
            for event in events:
                result = function.invoke(event)
                print(json.dumps(result.payload), flush=True)
                failed = failed or not result.ok
    except InvokeError as exc:
        raise CommandError(str(exc)) from exc
    return 1 if failed else 0


def _read_json(name: str, what: str) -> Any:
    try:
        if name == "-":
            return json.load(sys.stdin)
        with open(name, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read the {what} file {name}: {exc}") from exc


def _parse_overrides(items: list[str]) -> dict[str, str]:
    """``K=V`` or SAM's ``ParameterKey=K,ParameterValue=V``.

    >>> _parse_overrides(["Env=prod", "ParameterKey=P1,ParameterValue=q"])
    {'Env': 'prod', 'P1': 'q'}
    """
    result: dict[str, str] = {}
    for item in items:
        if item.startswith("ParameterKey="):
            key_part, _, value_part = item.partition(",")
            key = key_part.removeprefix("ParameterKey=")
            value = value_part.removeprefix("ParameterValue=")
        else:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--parameter-overrides: {item!r} is not KEY=VALUE")
        result[key] = value
    return result
