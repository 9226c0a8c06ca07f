"""Run a template's function in this process, the way ``sam local invoke`` runs it in Docker.

Example::

    import json
    from lambda_db.cli.invoke import invoke

    with open("events/env.json") as f:
        env_vars = json.load(f)
    with open("events/items-list.json") as f:
        event = json.load(f)
    response = invoke("ItemsFunction", event, env_vars=env_vars)
    print(response["statusCode"])

What is mirrored from ``sam local invoke -e EVENT --env-vars ENV_JSON``:

* the function's ``Handler``, ``CodeUri``, ``Runtime``, ``Timeout``, ``MemorySize``,
  ``LoggingConfig`` and ``Environment`` come from the template, with ``Globals.Function``
  merged in (the function's values win; environment variables merge);
* intrinsic functions are resolved as SAM CLI resolves them: ``Ref`` to a parameter gives
  its override or default, a pseudo parameter a placeholder (``us-east-1``,
  ``123456789012``), a resource its logical id; ``Fn::GetAtt`` gives a placeholder ARN
  for ``.Arn`` and ``$Logical.Attribute`` inside ``Fn::Sub``; ``Fn::Sub``, ``Fn::Join``,
  ``Fn::Select``, ``Fn::Split``, ``Fn::If``, ``Fn::FindInMap`` and ``Fn::Base64`` are
  evaluated; anything left unresolved (``!GetAtt Proxy.Endpoint``) becomes ``""``.
  Deliberate differences, where CloudFormation is followed: ``${!Literal}`` in ``Fn::Sub``
  gives ``${Literal}`` (SAM CLI keeps the ``!``) and ``!Ref AWS::NoValue`` removes the
  variable (SAM CLI sets it to ``""``);
* ``env_vars`` (the env.json format: ``{"Parameters": {...}, "FunctionLogicalId": {...}}``)
  overrides only the variables the template declares for the function; the function's
  own entry beats ``Parameters``, which beats the shell's environment, which beats the
  template;
* the runtime's variables (``AWS_SAM_LOCAL=true``, ``AWS_LAMBDA_FUNCTION_NAME`` = the
  logical id, ``AWS_REGION``, placeholder credentials unless the shell has real ones);
* a context object whose ``get_remaining_time_in_millis()`` counts down from ``Timeout``;
* a cold start every time: the handler's modules are imported afresh, lambda_db's default
  database is reset and loggers are configured anew; after the call the connection is
  closed as the container would be (``close_connections=False`` leaves it open, to look
  at what the invocation left behind). Libraries stay imported: Powertools' ``cold_start``
  reads false after the first call in a process;
* the event and the response cross a JSON boundary; an exception becomes Lambda's error
  payload (``errorMessage``, ``errorType``, ``stackTrace``) instead of propagating;
* what the function prints (its logs, Powertools' metrics) goes to standard error, so
  standard output is left for the response, as ``sam local invoke`` does.

What differs: the handler runs in this interpreter, with this virtualenv's packages (the
template's layers are not loaded) and this process's other environment variables still
visible; a handler that overruns ``Timeout`` is not interrupted, but its result is
replaced by Lambda's timeout error. The process environment, ``sys.path`` and the
handler's modules are restored afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lambda_db.errors import LambdaDbError

__all__ = [
    "FunctionConfig",
    "InvokeError",
    "LocalContext",
    "invoke",
    "load_function",
    "load_template",
]

#: Values SAM CLI gives the pseudo parameters locally.
PSEUDO_PARAMETERS: Mapping[str, str] = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::StackName": "local",
    "AWS::StackId": (
        "arn:aws:cloudformation:us-east-1:123456789012:stack/local/"
        "51af3dc0-da77-11e4-872e-1234567db123"
    ),
    "AWS::URLSuffix": "localhost",
}
#: SAM CLI's placeholder credentials when the shell has none.
DEFAULT_ACCESS_KEY_ID = "defaultkey"
DEFAULT_SECRET_ACCESS_KEY = "defaultsecret"  # noqa: S105 (SAM CLI's placeholder, not a secret)
DEFAULT_REGION = "us-east-1"
DEFAULT_TIMEOUT = 3.0
DEFAULT_MEMORY_SIZE = 128
FUNCTION_TYPE = "AWS::Serverless::Function"

_NO_VALUE = object()  # Ref AWS::NoValue: the key disappears
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class InvokeError(LambdaDbError):
    """The function cannot be run locally: not in the template, not Python, bad env.json."""


# --------------------------------------------------------------------------- template


class _CfnLoader(yaml.SafeLoader):
    """PyYAML loader that reads CloudFormation's short forms (``!Ref``, ``!GetAtt``, ...)."""


def _construct_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        logical_id, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [logical_id, attribute]}
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a CloudFormation/SAM template, short-form tags as their long forms.

    ``!Ref X`` reads as ``{"Ref": "X"}``, ``!GetAtt A.B`` as ``{"Fn::GetAtt": ["A", "B"]}``,
    ``!Sub ...`` as ``{"Fn::Sub": ...}`` and so on.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            template = yaml.load(f, Loader=_CfnLoader)  # noqa: S506 (a SafeLoader subclass)
    except OSError as exc:
        raise InvokeError(f"cannot read the template {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvokeError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise InvokeError(f"{path} is not a CloudFormation template (no Resources)")
    return template


@dataclass
class _Resolver:
    """Resolves intrinsic functions the way SAM CLI does for local runs."""

    template: Mapping[str, Any]
    parameters: Mapping[str, Any]
    _conditions: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def for_template(
        cls, template: Mapping[str, Any], overrides: Mapping[str, str] | None
    ) -> _Resolver:
        values: dict[str, Any] = dict(PSEUDO_PARAMETERS)
        specs = template.get("Parameters") or {}
        for name, spec in specs.items():
            if isinstance(spec, Mapping) and "Default" in spec:
                values[name] = spec["Default"]
        values.update(overrides or {})
        for name, spec in specs.items():  # list parameters are lists once resolved
            kind = str(spec.get("Type", "")) if isinstance(spec, Mapping) else ""
            if isinstance(values.get(name), str) and (
                kind == "CommaDelimitedList" or kind.startswith("List<")
            ):
                values[name] = values[name].split(",")
        return cls(template, values)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = (self.resolve(item) for item in value)
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            method = _INTRINSICS.get(key)
            if method is not None:
                return method(self, arg)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}

    def ref(self, name: Any) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in (self.template.get("Resources") or {}):
            return name
        return {"Ref": name}

    def get_att(self, arg: Any, *, in_sub: bool = False) -> Any:
        """``X.Arn`` gives a placeholder ARN (of a Lambda function, whatever X is: SAM CLI's
        rule); other attributes stay unresolved, or read ``$X.Attribute`` inside Fn::Sub."""
        if isinstance(arg, list) and len(arg) == 2:
            logical_id, attribute = (self.resolve(part) for part in arg)
            if attribute == "Arn":
                return (
                    f"arn:{self.parameters['AWS::Partition']}:lambda:"
                    f"{self.parameters['AWS::Region']}:{self.parameters['AWS::AccountId']}"
                    f":function:{logical_id}"
                )
            if in_sub:
                return f"${logical_id}.{attribute}"
        return {"Fn::GetAtt": arg}

    def sub(self, arg: Any) -> Any:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {name: self.resolve(item) for name, item in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                value = variables[name]
            elif "." in name:
                value = self.get_att(name.split(".", 1), in_sub=True)
            else:
                value = self.ref(name)
            return value if isinstance(value, str) else _stringify(value)

        return _SUB_VARIABLE.sub(replace, text)

    def base64(self, arg: Any) -> Any:
        text = self.resolve(arg)
        if not isinstance(text, str):
            return {"Fn::Base64": arg}
        return base64.b64encode(text.encode()).decode()

    def join(self, arg: Any) -> Any:
        delimiter, items = arg
        items = self.resolve(items)
        if not isinstance(items, list) or not all(isinstance(i, (str, int, float)) for i in items):
            return {"Fn::Join": arg}
        return str(delimiter).join(str(item) for item in items)

    def select(self, arg: Any) -> Any:
        index, items = (self.resolve(part) for part in arg)
        try:
            return items[int(index)]
        except (TypeError, ValueError, IndexError, KeyError):
            return {"Fn::Select": arg}

    def split(self, arg: Any) -> Any:
        delimiter, text = arg
        text = self.resolve(text)
        return text.split(delimiter) if isinstance(text, str) else {"Fn::Split": arg}

    def find_in_map(self, arg: Any) -> Any:
        name, first, second = (self.resolve(part) for part in arg[:3])
        try:
            return self.template["Mappings"][name][first][second]
        except (KeyError, TypeError):
            return {"Fn::FindInMap": arg}

    def if_(self, arg: Any) -> Any:
        condition, when_true, when_false = arg
        return self.resolve(when_true if self.condition(condition) else when_false)

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = False  # a cycle reads as false
            spec = (self.template.get("Conditions") or {}).get(name)
            self._conditions[name] = bool(self.evaluate(spec))
        return self._conditions[name]

    def evaluate(self, spec: Any) -> Any:
        if isinstance(spec, dict) and len(spec) == 1:
            ((key, arg),) = spec.items()
            if key == "Fn::Equals":
                left, right = (self.resolve(part) for part in arg)
                return _stringify(left) == _stringify(right)
            if key == "Fn::Not":
                return not self.evaluate(arg[0])
            if key == "Fn::And":
                return all(self.evaluate(part) for part in arg)
            if key == "Fn::Or":
                return any(self.evaluate(part) for part in arg)
            if key == "Condition":
                return self.condition(arg)
        return self.resolve(spec)


_INTRINSICS: dict[str, Callable[[_Resolver, Any], Any]] = {
    "Ref": _Resolver.ref,
    "Fn::GetAtt": _Resolver.get_att,
    "Fn::Sub": _Resolver.sub,
    "Fn::Base64": _Resolver.base64,
    "Fn::Join": _Resolver.join,
    "Fn::Select": _Resolver.select,
    "Fn::Split": _Resolver.split,
    "Fn::FindInMap": _Resolver.find_in_map,
    "Fn::If": _Resolver.if_,
}


def _stringify(value: Any) -> str:
    """SAM CLI's rule for environment values: unresolved (dict/list) and None become ""."""
    if isinstance(value, (dict, list, tuple)) or value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


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
    log_format: str | None = None
    log_level: str | None = None


def load_function(
    function_logical_id: str,
    *,
    template_path: str | os.PathLike[str] = "template.yaml",
    parameter_overrides: Mapping[str, str] | None = None,
) -> FunctionConfig:
    """Read one ``AWS::Serverless::Function`` from the template, Globals merged in."""
    path = Path(template_path)
    template = load_template(path)
    resource = template["Resources"].get(function_logical_id)
    if not isinstance(resource, dict) or resource.get("Type") != FUNCTION_TYPE:
        functions = sorted(
            name
            for name, spec in template["Resources"].items()
            if isinstance(spec, dict) and spec.get("Type") == FUNCTION_TYPE
        )
        raise InvokeError(
            f"{function_logical_id!r} is not an {FUNCTION_TYPE} in {path}; "
            f"functions there: {', '.join(functions) or 'none'}"
        )
    resolver = _Resolver.for_template(template, parameter_overrides)
    globals_ = resolver.resolve(((template.get("Globals") or {}).get("Function")) or {})
    props = resolver.resolve(resource.get("Properties") or {})

    def prop(name: str, default: Any = None) -> Any:
        return props.get(name, globals_.get(name, default))

    handler, code_uri, runtime = prop("Handler"), prop("CodeUri"), prop("Runtime")
    if not isinstance(handler, str) or "." not in handler:
        raise InvokeError(f"{function_logical_id} has no Handler of the form module.function")
    if not isinstance(code_uri, str):
        raise InvokeError(f"{function_logical_id} needs a local CodeUri directory")
    if not isinstance(runtime, str) or not runtime.startswith("python"):
        raise InvokeError(
            f"{function_logical_id} runs on {runtime!r}; only Python functions run in-process"
        )
    variables: dict[str, Any] = {}
    for source in (globals_, props):
        env = source.get("Environment") or {}
        variables.update(env.get("Variables") or {})
    logging_config = prop("LoggingConfig") or {}
    return FunctionConfig(
        logical_id=function_logical_id,
        handler=handler,
        code_uri=(path.parent / code_uri).resolve(),
        runtime=runtime,
        timeout=float(prop("Timeout", DEFAULT_TIMEOUT)),
        memory_size=int(prop("MemorySize", DEFAULT_MEMORY_SIZE)),
        environment={name: _stringify(value) for name, value in variables.items()},
        log_format=logging_config.get("LogFormat"),
        log_level=logging_config.get("ApplicationLogLevel"),
    )


# --------------------------------------------------------------------------- environment


def _function_environment(
    function: FunctionConfig,
    env_vars: Mapping[str, Any] | None,
    shell: Mapping[str, str],
) -> dict[str, str]:
    """The variables the function sees: runtime's, then declared ones with overrides."""
    overrides: dict[str, Any] = {}
    for key, values in (env_vars or {}).items():
        if not isinstance(values, Mapping):
            raise InvokeError(
                f"env vars entry {key!r} must map variable names to values "
                '(the env.json format: {"Parameters": {...}, "FunctionLogicalId": {...}})'
            )
    if env_vars:
        overrides.update(env_vars.get("Parameters") or {})
        overrides.update(env_vars.get(function.logical_id) or {})

    region = shell.get("AWS_REGION") or shell.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    result = {
        "AWS_SAM_LOCAL": "true",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": _seconds_text(function.timeout),
        "AWS_LAMBDA_FUNCTION_HANDLER": function.handler,
        "AWS_LAMBDA_FUNCTION_NAME": function.logical_id,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"aws/lambda/{function.logical_id}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": shell.get("AWS_ACCESS_KEY_ID") or DEFAULT_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": shell.get("AWS_SECRET_ACCESS_KEY") or DEFAULT_SECRET_ACCESS_KEY,
        "AWS_ACCOUNT_ID": PSEUDO_PARAMETERS["AWS::AccountId"],
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{function.runtime}",
        "LAMBDA_TASK_ROOT": str(function.code_uri),
        "_HANDLER": function.handler,
    }
    if shell.get("AWS_SESSION_TOKEN"):
        result["AWS_SESSION_TOKEN"] = shell["AWS_SESSION_TOKEN"]
    if function.log_format:
        result["AWS_LAMBDA_LOG_FORMAT"] = function.log_format
        if function.log_format == "JSON":
            result["AWS_LAMBDA_LOG_LEVEL"] = function.log_level or "INFO"
    for name, value in function.environment.items():
        chosen: Any = value
        if name in shell:
            chosen = shell[name]
        if name in overrides:
            chosen = overrides[name]
        result[name] = _stringify(chosen)
    return result


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else str(seconds)


@contextlib.contextmanager
def _patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


# --------------------------------------------------------------------------- context


@dataclass
class LocalContext:
    """A Lambda context object with a real deadline (``time.monotonic()`` based)."""

    function_name: str
    memory_limit_in_mb: int
    timeout: float
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout

    @property
    def invoked_function_arn(self) -> str:
        return (
            f"arn:aws:lambda:{os.environ.get('AWS_REGION', DEFAULT_REGION)}:"
            f"{PSEUDO_PARAMETERS['AWS::AccountId']}:function:{self.function_name}"
        )

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's ``Timeout``, never negative."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# --------------------------------------------------------------------------- invoke


@contextlib.contextmanager
def _handler_from(code_dir: Path, handler: str) -> Iterator[Callable[[Any, Any], Any]]:
    """Import ``module.function`` afresh from ``code_dir``; forget its modules afterwards."""
    module_name, _, function_name = handler.rpartition(".")
    module_name = module_name.replace("/", ".")
    if not code_dir.is_dir():
        raise InvokeError(f"CodeUri {code_dir} is not a directory")
    entry = str(code_dir)
    sys.path.insert(0, entry)
    _forget_modules(code_dir, also=module_name)
    try:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvokeError(f"cannot import {module_name!r} from {code_dir}: {exc}") from exc
        function = getattr(module, function_name, None)
        if not callable(function):
            raise InvokeError(f"{module_name}.{function_name} is not a function")
        yield function
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)
        _forget_modules(code_dir, also=module_name)


def _forget_modules(code_dir: Path, *, also: str) -> None:
    sys.modules.pop(also, None)
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and Path(origin).resolve().is_relative_to(code_dir):
            del sys.modules[name]


@contextlib.contextmanager
def _fresh_loggers() -> Iterator[None]:
    """Forget the loggers the invocation configured, as the end of a container would.

    A logging library (Powertools' ``Logger``) configures its logger once per process and
    binds it to the ``sys.stdout`` of that moment; the next cold start must configure it
    again, from the environment and streams of its own invocation.
    """
    manager = logging.Logger.manager
    before = set(manager.loggerDict)
    try:
        yield
    finally:
        for name in set(manager.loggerDict) - before:
            logger = manager.loggerDict[name]
            if isinstance(logger, logging.Logger) and logger.handlers:
                logger.handlers.clear()
                del manager.loggerDict[name]


def _reset_lambda_db() -> None:
    from lambda_db import reset  # the cold start: the next get_connection() reads the new env

    reset()


def _error_payload(exc: BaseException, request_id: str) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(frames),
    }


def invoke(
    function_logical_id: str,
    event: Mapping[str, Any],
    *,
    template_path: str | os.PathLike[str] = "template.yaml",
    env_vars: Mapping[str, Any] | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    close_connections: bool = True,
) -> Any:
    """Invoke one function of a SAM template in-process; return its (JSON) response.

    * ``env_vars``: overrides in ``sam local invoke --env-vars`` format;
    * ``parameter_overrides``: template parameter values (``--parameter-overrides``);
    * ``environ``: extra process variables set as given, declared or not (applied last);
    * ``close_connections``: close lambda_db's connection after the call, as the end of
      the container would.

    A handler exception or timeout is returned as Lambda's error payload, not raised.
    :class:`InvokeError` is raised when the function cannot be found or loaded.
    """
    function = load_function(
        function_logical_id, template_path=template_path, parameter_overrides=parameter_overrides
    )
    variables = _function_environment(function, env_vars, os.environ)
    variables.update(environ or {})
    payload = json.loads(json.dumps(event))
    with _patched_environ(variables):
        _reset_lambda_db()
        context = LocalContext(
            function_name=function.logical_id,
            memory_limit_in_mb=function.memory_size,
            timeout=function.timeout,
        )
        try:
            with (
                contextlib.redirect_stdout(sys.stderr),
                _fresh_loggers(),
                _handler_from(function.code_uri, function.handler) as handler,
            ):
                started = time.monotonic()
                try:
                    response = handler(payload, context)
                except Exception as exc:  # noqa: BLE001 (the runtime reports it, as Lambda does)
                    return _error_payload(exc, context.aws_request_id)
                elapsed = time.monotonic() - started
                if elapsed > function.timeout:
                    return {
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": f"RequestId: {context.aws_request_id} Error: "
                        f"Task timed out after {function.timeout:.2f} seconds",
                    }
                try:
                    return json.loads(json.dumps(response))
                except (TypeError, ValueError) as exc:
                    return {
                        "errorType": "Runtime.MarshalError",
                        "errorMessage": f"Unable to marshal response: {exc}",
                        "requestId": context.aws_request_id,
                    }
        finally:
            if close_connections:
                _reset_lambda_db()
