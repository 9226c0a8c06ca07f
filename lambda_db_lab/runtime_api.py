"""A Lambda execution environment on this machine: the real runtime client against a small
Runtime API.

Lambda's managed Python runtime runs the runtime interface client ``awslambdaric``: it
imports the handler once (the init phase), then loops on the Runtime API: ``GET
/2018-06-01/runtime/invocation/next`` hands it an event with the ``Lambda-Runtime-*``
headers it builds the context from, and it posts the marshalled response (``.../response``)
or Lambda's error payload (``.../error``; ``/init/error`` when the import fails). Here
:class:`RuntimeApi` is that API on ``127.0.0.1``, and :class:`ExecutionEnvironment` runs
``python -m awslambdaric HANDLER`` against it as Lambda runs one environment:

* init is not charged to the first invocation: the deadline
  (``Lambda-Runtime-Deadline-Ms``) starts when the event is handed out;
* warm across invocations (module state survives) and **frozen** between them: once the
  runtime is back waiting for its next event, the process group gets ``SIGSTOP``, and
  ``SIGCONT`` when the next event comes, so nothing runs between invocations;
* a handler that overruns its timeout gets Lambda's ``Sandbox.Timedout`` error and the
  environment is killed (the next invocation starts a new one), as is one whose runtime
  exits (``Runtime.ExitError``);
* the context object, the marshalling (simplejson: a ``Decimal`` is a number), the
  ``_X_AMZN_TRACE_ID`` variable and the log format are the runtime client's own.

The handler runs under this interpreter (``sys.executable``) with its installed packages,
in a fresh process whose environment is exactly what the caller passes plus what the
runtime sets. Its standard output and error go to ``output`` (default ``sys.stderr``),
line by line, so standard output is left for responses.

Lambda is followed where it and ``sam local invoke`` differ: init errors are returned on
the first invocation, and a timeout ends the environment.

The runtime never outlives the process that started it, even one killed with SIGKILL:
it is started with ``PR_SET_PDEATHSIG=SIGKILL`` (Linux), so the kernel kills it, frozen
or not, when its parent goes, and with it the database connections it holds. The
kernel sends that signal when the *thread* that started the runtime ends: start an
environment from a thread that outlives it (the main thread, as the CLI does).

Example::

    with ExecutionEnvironment("app.handler", code_dir="src", timeout=3.0) as env:
        first = env.invoke({"name": "Ada"})      # init, then the invocation
        second = env.invoke({"name": "Grace"})   # warm: same process, thawed
    assert first.ok and second.ok
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

__all__ = ["Answer", "ExecutionEnvironment", "Invocation", "Result", "RuntimeApi"]

logger = logging.getLogger(__name__)

API_PREFIX = "/2018-06-01/runtime"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
#: ``prctl`` option: the signal the kernel sends a process when its parent (thread) ends.
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Invocation:
    """One event as the Runtime API hands it to the runtime."""

    request_id: str
    payload: bytes
    #: Wall-clock milliseconds since the epoch (``Lambda-Runtime-Deadline-Ms``).
    deadline_ms: int
    function_arn: str
    trace_id: str
    client_context: str | None = None
    cognito_identity: str | None = None

    def headers(self) -> dict[str, str]:
        """The ``Lambda-Runtime-*`` headers of ``GET .../invocation/next``."""
        headers = {
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": self.trace_id,
            "Content-Type": "application/json",
        }
        if self.client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = self.client_context
        if self.cognito_identity is not None:
            headers["Lambda-Runtime-Cognito-Identity"] = self.cognito_identity
        return headers


@dataclass(frozen=True)
class Answer:
    """What the runtime posted: a response, an invocation error or an init error."""

    kind: str  # "response", "error" or "init-error"
    body: bytes
    error_type: str | None = None


class RuntimeApi:
    """The Runtime API of one execution environment, on ``127.0.0.1`` (a free port).

    :meth:`offer` gives the next ``GET .../invocation/next`` its event; the runtime's
    posts are kept as :class:`Answer` objects (:meth:`answer`, :attr:`init_error`).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._offered: Invocation | None = None
        self._polling = 0
        self._answers: dict[str, Answer] = {}
        self._closed = False
        self.init_error: Answer | None = None
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long close() waits for the loop to notice
            name="runtime-api",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port``, the value of ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def polling(self) -> bool:
        """True while the runtime waits in ``GET .../invocation/next``."""
        return self._polling > 0

    def offer(self, invocation: Invocation) -> None:
        """Hand ``invocation`` to the runtime's current or next ``GET .../next``."""
        with self._changed:
            self._offered = invocation
            self._changed.notify_all()

    def answer(self, request_id: str) -> Answer | None:
        """What the runtime posted for ``request_id`` so far."""
        return self._answers.get(request_id)

    def wait(self, condition: Callable[[], object], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until ``condition()`` holds; its last value.

        It is checked on every request, and every 20 ms (for conditions on the process).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.02))
            return True

    def close(self) -> None:
        """Release a waiting ``GET .../next`` and stop serving."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- called by the request handler -------------------------------------------------

    def _next(self) -> Invocation | None:
        with self._changed:
            self._polling += 1
            self._changed.notify_all()
            try:
                self._changed.wait_for(lambda: self._offered is not None or self._closed)
                invocation, self._offered = self._offered, None
                return invocation
            finally:
                self._polling -= 1

    def _post(self, key: str | None, answer: Answer) -> None:
        with self._changed:
            if key is None:
                self.init_error = answer
            else:
                self._answers[key] = answer
            self._changed.notify_all()


def _handler_for(api: RuntimeApi) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms stall)

        def do_GET(self) -> None:
            if self.path != f"{API_PREFIX}/invocation/next":
                self._reply(404, {"errorMessage": f"no such path {self.path}"})
                return
            invocation = api._next()
            if invocation is None:  # closing
                self._reply(500, {"errorMessage": "the environment is shutting down"})
                return
            self._reply(200, invocation.payload, invocation.headers())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            error_type = self.headers.get(ERROR_TYPE_HEADER)
            parts = self.path.removeprefix(API_PREFIX).strip("/").split("/")
            if parts == ["init", "error"]:
                api._post(None, Answer("init-error", body, error_type))
            elif len(parts) == 3 and parts[0] == "invocation" and parts[2] == "response":
                api._post(parts[1], Answer("response", body))
            elif len(parts) == 3 and parts[0] == "invocation" and parts[2] == "error":
                api._post(parts[1], Answer("error", body, error_type))
            else:
                self._reply(404, {"errorMessage": f"no such path {self.path}"})
                return
            self._reply(202, {"status": "OK"})

        def _reply(
            self, status: int, body: bytes | dict[str, Any], headers: Mapping[str, str] = {}
        ) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a killed runtime
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("runtime api: " + format, *args)

    return Handler


@dataclass(frozen=True)
class Result:
    """One invocation's outcome, as the invoker of a Lambda function sees it."""

    request_id: str
    #: The response, or Lambda's error payload (``errorType``, ``errorMessage``, ...),
    #: decoded from JSON (``None`` for an empty body; the raw text if not JSON).
    payload: Any
    #: ``None`` on success; else the error type (``Sandbox.Timedout``,
    #: ``Runtime.ImportModuleError``, ``Runtime.ExitError``, the exception's class...).
    error_type: str | None
    #: Seconds from handing out the event to the answer.
    duration: float
    #: Whether this invocation ran the init phase first (a cold start).
    cold: bool

    @property
    def ok(self) -> bool:
        """True when the function returned a response."""
        return self.error_type is None


class ExecutionEnvironment:
    """One Lambda execution environment: ``awslambdaric`` in a process against a
    :class:`RuntimeApi`, started on the first :meth:`invoke` (or :meth:`start`).

    * ``handler``: ``module.function``, imported from ``code_dir``;
    * ``environ``: the function's environment variables (nothing else is inherited but
      ``PATH``); the runtime's own (``AWS_LAMBDA_RUNTIME_API``, ``LAMBDA_TASK_ROOT``,
      ``_HANDLER``...) are added;
    * ``timeout``: seconds, the function's ``Timeout``;
    * ``function_arn``: what ``context.invoked_function_arn`` says;
    * ``output``: where the function's output goes, line by line (default: the
      ``sys.stderr`` of the moment each line arrives).
    """

    #: Lambda gives the init phase of an on-demand function 10 seconds.
    INIT_TIMEOUT = 10.0
    #: How long the runtime may take to come back for its next event before it is
    #: frozen anyway.
    FREEZE_GRACE = 2.0

    def __init__(
        self,
        handler: str,
        *,
        code_dir: str | os.PathLike[str],
        environ: Mapping[str, str] | None = None,
        timeout: float = 3.0,
        function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local",
        output: TextIO | None = None,
        python: str = sys.executable,
    ) -> None:
        self.handler = handler
        self.code_dir = Path(code_dir).resolve()
        self.environ = dict(environ or {})
        self.timeout = timeout
        self.function_arn = function_arn
        self._output = output
        self._python = python
        self._api: RuntimeApi | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self.frozen = False
        #: Init phases run so far (1 while the environment stays warm).
        self.inits = 0

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> ExecutionEnvironment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The runtime's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> Answer | None:
        """Run the init phase: start the runtime and wait until it asks for an event.

        Returns the runtime's init error (``/init/error``), or ``None`` when it is ready.
        The environment is frozen afterwards.
        """
        if self.pid is not None:
            return None
        self.close()
        if not self.code_dir.is_dir():
            raise FileNotFoundError(f"the code directory {self.code_dir} does not exist")
        self._api = api = RuntimeApi()
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
            **self.environ,
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "LAMBDA_TASK_ROOT": str(self.code_dir),
            "_HANDLER": self.handler,
            "PYTHONPATH": str(self.code_dir),
        }
        self._proc = proc = subprocess.Popen(
            [self._python, "-m", "awslambdaric", self.handler],
            cwd=self.code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: frozen and killed as one
            preexec_fn=_killed_with_parent(),  # the kernel kills it if we die
        )
        assert proc.stdout is not None
        self._pump = threading.Thread(
            target=self._forward, args=(proc.stdout,), name="runtime-output", daemon=True
        )
        self._pump.start()
        self.inits += 1
        api.wait(
            lambda: api.polling or api.init_error or proc.poll() is not None, self.INIT_TIMEOUT
        )
        if api.init_error is not None:
            self._kill()
            return api.init_error
        if not api.polling:
            status = proc.poll()
            self._kill()
            why = (
                f"exited with status {status}"
                if status is not None
                else f"did not finish its init within {self.INIT_TIMEOUT:g} s"
            )
            return Answer(
                "init-error",
                json.dumps(
                    {"errorType": "Runtime.ExitError", "errorMessage": f"Runtime {why}"}
                ).encode(),
                "Runtime.ExitError",
            )
        self._freeze()
        return None

    def close(self) -> None:
        """End the environment (as Lambda does: no SIGTERM without an extension)."""
        self._kill()
        if self._api is not None:
            self._api.close()
            self._api = None

    # -- invocations --------------------------------------------------------------------

    def invoke(
        self,
        event: Any,
        *,
        request_id: str | None = None,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> Result:
        """Invoke the function with ``event`` (JSON-serializable, or ``bytes`` as sent)."""
        request_id = request_id or str(uuid.uuid4())
        cold = self.pid is None
        init_error = self.start() if cold else None
        if init_error is not None:
            return _result(request_id, init_error, 0.0, cold=True)
        api, proc = self._api, self._proc
        assert api is not None and proc is not None
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        self._thaw()
        started = time.monotonic()
        api.offer(
            Invocation(
                request_id=request_id,
                payload=payload,
                deadline_ms=int((time.time() + self.timeout) * 1000),
                function_arn=self.function_arn,
                trace_id=_trace_id(),
                client_context=None if client_context is None else json.dumps(client_context),
                cognito_identity=None if identity is None else json.dumps(identity),
            )
        )
        api.wait(lambda: api.answer(request_id) or proc.poll() is not None, self.timeout)
        duration = time.monotonic() - started
        answer = api.answer(request_id)
        if answer is not None:
            api.wait(lambda: api.polling or proc.poll() is not None, self.FREEZE_GRACE)
            self._freeze()
            return _result(request_id, answer, duration, cold=cold)
        if proc.poll() is not None:
            error_type, message = (
                "Runtime.ExitError",
                (
                    f"RequestId: {request_id} Error: Runtime exited with error: "
                    f"exit status {proc.returncode}"
                ),
            )
        else:
            error_type, message = (
                "Sandbox.Timedout",
                (f"RequestId: {request_id} Error: Task timed out after {self.timeout:.2f} seconds"),
            )
        self._kill()  # Lambda ends the environment: the next invocation is a cold start
        body = json.dumps({"errorType": error_type, "errorMessage": message}).encode()
        return _result(request_id, Answer("error", body, error_type), duration, cold=cold)

    # -- internals ----------------------------------------------------------------------

    def _freeze(self) -> None:
        if self.pid is not None and not self.frozen:
            os.killpg(self.pid, signal.SIGSTOP)
            self.frozen = True

    def _thaw(self) -> None:
        if self.pid is not None and self.frozen:
            os.killpg(self.pid, signal.SIGCONT)
        self.frozen = False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.frozen = False
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None

    def _forward(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            out = self._output or sys.stderr
            # The runtime writes a multi-line record (a traceback) with "\r" for "\n", so
            # that CloudWatch keeps it as one event; a terminal would overwrite it.
            out.write(line.decode("utf-8", "replace").replace("\r", "\n"))
            out.flush()
        stream.close()


def _killed_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process (the
    calling thread) ends: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. ``None`` off Linux.

    The function and the parent's pid are looked up here, before the fork: the child
    only makes the system call. A parent that died between the fork and the call is
    caught by comparing ``getppid()``.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def die_with_parent() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(127)

    return die_with_parent


def _result(request_id: str, answer: Answer, duration: float, *, cold: bool) -> Result:
    text = answer.body.decode("utf-8", "replace")
    payload: Any
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = text
    error_type = None
    if answer.kind != "response":
        error_type = answer.error_type or (
            payload.get("errorType") if isinstance(payload, dict) else None
        )
        error_type = error_type or "Runtime.Unknown"
    return Result(request_id, payload, error_type, duration, cold)


def _trace_id() -> str:
    """An X-Ray trace header as Lambda passes it (``Root=1-<time>-<id>;Parent=...``)."""
    return (
        f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
        f"Parent={uuid.uuid4().hex[:16]};Sampled=0"
    )
