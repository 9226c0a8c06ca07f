"""Credentials benchmarks: the IAM path's cold start, and Secrets Manager calls per window.

1. **IAM cold start.** Fresh interpreters, interleaved, ``REPEATS`` of each (after one
   unmeasured warm-up of each, so the file cache is warm for both), timed inside the
   process with ``perf_counter`` at two points:

   * lambda-db: ``import lambda_db`` (psycopg2 included) | then ``make_provider(
     Settings.from_env()).get()``: botocore imported lazily, credentials from the chain,
     one signature;
   * boto3: ``import psycopg2`` (a function needs the driver either way) | then
     ``import boto3`` + ``boto3.client("rds").generate_db_auth_token(...)``.

   ``iam_path`` is the second part (what each way costs to get a token),
   ``end_to_end`` both parts. Each runs in two environments:

   * ``as_installed``: this virtualenv as it is (awscrt and pyOpenSSL are installed here,
     and botocore imports both when present: about 120 ms on both sides);
   * ``lambda_like``: the same with awscrt and pyOpenSSL hidden (``sys.modules[...] =
     None`` before the clock starts), as in the Lambda Python runtime, which ships boto3
     and botocore without them (inference: check ``pip list`` in the runtime image).

   Credentials are fixed environment variables (as in Lambda); config files and instance
   metadata are off, so neither side touches the network.

2. **Secrets Manager calls.** moto serves the secret; ``INVOCATIONS`` invocations each
   ask the provider for credentials as a connect would (the worst case: every
   invocation reconnects), on a fake monotonic clock that advances ``STEP`` seconds per
   invocation. Expected: one ``GetSecretValue`` per ``secret_max_age`` window. (With a
   warm connection the provider is not asked at all.)

3. **A dead endpoint.** A listening socket that completes the TCP handshake (the kernel
   does) and never answers stands for Secrets Manager (``AWS_ENDPOINT_URL_SECRETS_MANAGER``)
   and, in iam mode without keys in the environment, for the container credentials
   endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``, SnapStart). The provider is asked with
   ``DEAD_BUDGET`` seconds, what a 3-second function leaves to connect (3 s minus the
   default 0.75 s margin): how long the first ``get()`` takes to fail, and how long the
   next one takes (the failure is remembered).
   Medians of ``DEAD_REPEATS`` fresh providers. Before the budget existed, the first
   failure took 15.6 s and 16.4 s in secret mode, on every invocation (issue 9).

Run: ``python bench/bench_credentials.py`` (prints the figures as JSON).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

REPEATS = 7
DEAD_BUDGET = 2.25
DEAD_REPEATS = 3
INVOCATIONS = 1_000
STEP = 1.0
MAX_AGE = 300.0
GOAL_RATIO = 0.6

REGION = "eu-west-1"
HOST = "app-proxy.proxy-abcdefghijkl.eu-west-1.rds.amazonaws.com"
PORT = 5432
USER = "app_user"

#: Prepended before the clock starts in the ``lambda_like`` environment.
_HIDE_EXTRAS = "import sys\nsys.modules['awscrt'] = None\nsys.modules['OpenSSL'] = None\n"

_OURS = """
import time
t0 = time.perf_counter()
import lambda_db
t1 = time.perf_counter()
from lambda_db._credentials import make_provider
token = make_provider(lambda_db.Settings.from_env()).get().password
t2 = time.perf_counter()
assert token and "X-Amz-Signature=" in token
print((t1 - t0) * 1000, (t2 - t1) * 1000)
"""

_BOTO3 = """
import time
t0 = time.perf_counter()
import psycopg2
t1 = time.perf_counter()
import boto3
client = boto3.client("rds", region_name={region!r})
token = client.generate_db_auth_token(DBHostname={host!r}, Port={port}, DBUsername={user!r})
t2 = time.perf_counter()
assert token and "X-Amz-Signature=" in token
print((t1 - t0) * 1000, (t2 - t1) * 1000)
"""


def _environment(scratch: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DB_", "BOTO_"))}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLE" + "MEUCIQ+/EXAMPLE=" * 60,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": os.path.join(scratch, "none"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(scratch, "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "DB_AUTH_MODE": "iam",
            "DB_HOST": HOST,
            "DB_PORT": str(PORT),
            "DB_NAME": "app",
            "DB_USER": USER,
        }
    )
    return env


def _run(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(first part ms, second part ms) from one fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    first, second = out.stdout.split()
    return float(first), float(second)


def iam_cold_start(repeats: int = REPEATS) -> dict[str, Any]:
    """Median milliseconds of both ways to a first token, and lambda-db's ratios."""
    fmt = {"region": REGION, "host": HOST, "port": PORT, "user": USER}
    programs = {"lambda_db": textwrap.dedent(_OURS), "boto3": textwrap.dedent(_BOTO3.format(**fmt))}
    environments = {"as_installed": "", "lambda_like": _HIDE_EXTRAS}
    result: dict[str, Any] = {"repeats": repeats, "goal_ratio": GOAL_RATIO}
    with tempfile.TemporaryDirectory() as scratch:
        env = _environment(scratch)
        for env_name, prefix in environments.items():
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in programs}
            for code in programs.values():
                _run(prefix + code, env)  # warm-up, not counted
            for _ in range(repeats):
                for name, code in programs.items():
                    samples[name].append(_run(prefix + code, env))
            figures: dict[str, float] = {}
            for name, runs in samples.items():
                figures[f"{name}_iam_path_ms"] = round(statistics.median(r[1] for r in runs), 1)
                figures[f"{name}_end_to_end_ms"] = round(statistics.median(sum(r) for r in runs), 1)
            for part in ("iam_path", "end_to_end"):
                figures[f"ratio_{part}"] = round(
                    figures[f"lambda_db_{part}_ms"] / figures[f"boto3_{part}_ms"], 2
                )
            result[env_name] = figures
    return result


def secret_calls(
    invocations: int = INVOCATIONS, step: float = STEP, max_age: float = MAX_AGE
) -> dict[str, Any]:
    """``GetSecretValue`` calls over ``invocations`` connects on an advancing fake clock."""
    import boto3
    from moto import mock_aws

    from lambda_db._credentials.secret import SecretProvider
    from lambda_db.config import Settings

    now = [0.0]
    calls = [0]
    with tempfile.TemporaryDirectory() as scratch:
        saved = dict(os.environ)
        os.environ.update(_environment(scratch))
        try:
            with mock_aws():
                client: Any = boto3.client("secretsmanager", region_name=REGION)
                value = {"username": USER, "password": "bench-pw", "host": HOST, "port": PORT}
                arn = client.create_secret(Name="bench/db", SecretString=json.dumps(value))["ARN"]

                def count(**_: Any) -> None:
                    calls[0] += 1

                client.meta.events.register("before-call.secrets-manager.GetSecretValue", count)
                settings = Settings(auth_mode="secret", secret_arn=arn, secret_max_age=max_age)
                provider = SecretProvider(settings, client=client, clock=lambda: now[0])
                cached_ns: list[int] = []
                for _ in range(invocations):
                    before = provider.fetches
                    start = time.perf_counter_ns()
                    provider.get()
                    if provider.fetches == before:
                        cached_ns.append(time.perf_counter_ns() - start)
                    now[0] += step
        finally:
            os.environ.clear()
            os.environ.update(saved)
    span = invocations * step
    windows = math.ceil(span / max_age) if max_age else invocations
    return {
        "invocations": invocations,
        "clock_step_s": step,
        "secret_max_age_s": max_age,
        "max_age_windows": windows,
        "get_secret_value_calls": calls[0],
        "provider_fetches": provider.fetches,
        "calls_per_window": round(calls[0] / windows, 2),
        "cached_get_median_us": round(statistics.median(cached_ns) / 1000, 1),
    }


def dead_endpoints(budget: float = DEAD_BUDGET, repeats: int = DEAD_REPEATS) -> dict[str, Any]:
    """Seconds a silent Secrets Manager or container credentials endpoint costs, and the
    remembered failure after it (milliseconds)."""
    import socket

    from lambda_db._credentials.iam import IamTokenProvider
    from lambda_db._credentials.secret import SecretProvider
    from lambda_db.config import Settings

    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:bench-AbCdEf"
    secret = Settings(auth_mode="secret", secret_arn=arn)
    iam = Settings(host=HOST, dbname="app", user=USER, auth_mode="iam", region=REGION)
    result: dict[str, Any] = {"budget_s": budget, "repeats": repeats}
    with tempfile.TemporaryDirectory() as scratch, socket.create_server(("127.0.0.1", 0)) as silent:
        silent.listen(64)  # never accept(): the kernel completes handshakes, nobody answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        environments = {
            "secret": {**_environment(scratch), "AWS_ENDPOINT_URL_SECRETS_MANAGER": url},
            "iam_container": {
                **{k: v for k, v in _environment(scratch).items() if k not in keys},
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": url + "/2021-04-23/credentials",
            },
        }
        makers: dict[str, Any] = {
            "secret": lambda: SecretProvider(secret),
            "iam_container": lambda: IamTokenProvider(iam),
        }
        saved = dict(os.environ)
        try:
            for name, env in environments.items():
                os.environ.clear()
                os.environ.update(env)
                first: list[float] = []
                again: list[float] = []
                for _ in range(repeats):
                    provider = makers[name]()
                    for samples in (first, again):
                        start = time.perf_counter()
                        try:
                            provider.get(budget=budget)
                        except Exception:  # the typed DatabaseUnavailableError
                            samples.append(time.perf_counter() - start)
                        else:
                            raise AssertionError(f"{name}: a silent endpoint answered")
                result[f"{name}_first_failure_s"] = round(statistics.median(first), 2)
                result[f"{name}_first_failure_max_s"] = round(max(first), 2)
                result[f"{name}_remembered_failure_ms"] = round(statistics.median(again) * 1000, 2)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return result


def run() -> dict[str, Any]:
    """All figures of this module (what ``bench/__main__.py`` collects)."""
    return {
        "iam_cold_start": iam_cold_start(),
        "secret_calls": secret_calls(),
        "dead_endpoint": dead_endpoints(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
