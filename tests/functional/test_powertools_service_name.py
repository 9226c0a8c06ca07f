"""The Powertools pitfall, under Lambda's own runtime client: a Logger whose service name
is a substring of lambda-db's logger names drops their records on the runtime's root
handler; a service name with a hyphen (the documented safe choice) keeps them, and
lambda_db._powertools warns about the unsafe one where the warning can be seen. Turning
Powertools' deduplication off keeps them too, but prints Powertools' own records twice."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambda_db import _powertools
from lambda_db_lab.runtime_api import ExecutionEnvironment

HANDLER = """\
import logging

from aws_lambda_powertools import Logger

from lambda_db import _powertools

logger = Logger()  # service: POWERTOOLS_SERVICE_NAME


def handler(event, context):
    _powertools.warn_if_hidden()  # what lambda-db would call at first use
    logger.info("the function's own record")
    logging.getLogger("lambda_db.database").warning("lambda-db: reconnecting")
    return "ok"
"""


def run_under_the_runtime(tmp_path: Path, **environ: str) -> str:
    """Invoke the handler once under awslambdaric; everything it wrote."""
    (tmp_path / "app.py").write_text(HANDLER)
    output = io.StringIO()
    with ExecutionEnvironment(
        "app.handler", code_dir=tmp_path, environ=environ, output=output
    ) as env:
        result = env.invoke({})
    assert result.ok, result.payload
    return output.getvalue()


def test_a_service_named_db_hides_lambda_dbs_records(tmp_path: Path) -> None:
    printed = run_under_the_runtime(tmp_path, POWERTOOLS_SERVICE_NAME="db")
    assert "the function's own record" in printed
    assert "lambda-db: reconnecting" not in printed
    assert "hides lambda-db's log records" in printed  # the warning is not filtered


def test_a_hyphenated_service_name_shows_them_once(tmp_path: Path) -> None:
    printed = run_under_the_runtime(tmp_path, POWERTOOLS_SERVICE_NAME="orders-api")
    assert printed.count("the function's own record") == 1
    assert printed.count("lambda-db: reconnecting") == 1
    assert "hides lambda-db's log records" not in printed


@pytest.mark.parametrize("value", ["true", "1", "yes", "ON"])
def test_deduplication_disabled_shows_them_but_doubles_powertools_lines(
    tmp_path: Path, value: str
) -> None:
    """Why the docs recommend only a hyphenated name."""
    printed = run_under_the_runtime(
        tmp_path, POWERTOOLS_SERVICE_NAME="db", POWERTOOLS_LOG_DEDUPLICATION_DISABLED=value
    )
    assert "lambda-db: reconnecting" in printed
    assert printed.count("the function's own record") == 2
    assert "hides lambda-db's log records" not in printed


@pytest.fixture
def fresh_check() -> Iterator[None]:
    _powertools.reset()
    yield
    _powertools.reset()


@pytest.mark.usefixtures("fresh_check")
def test_the_warning_names_the_variable_and_the_fix_once() -> None:
    with pytest.warns(RuntimeWarning, match="POWERTOOLS_SERVICE_NAME='db' hides") as seen:
        message = _powertools.warn_if_hidden({"POWERTOOLS_SERVICE_NAME": "db"})
    assert message is not None
    assert "lambda_db" in message and "orders-api" in message
    assert "DEDUPLICATION" not in message  # not a fix to recommend: it doubles lines
    assert len(seen) == 1
    assert _powertools.warn_if_hidden({"POWERTOOLS_SERVICE_NAME": "db"}) is None  # once


@pytest.mark.usefixtures("fresh_check")
@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"POWERTOOLS_SERVICE_NAME": "orders-api"},
        {"POWERTOOLS_SERVICE_NAME": "db", "POWERTOOLS_LOG_DEDUPLICATION_DISABLED": "True"},
        {"POWERTOOLS_SERVICE_NAME": "db", "POWERTOOLS_LOG_DEDUPLICATION_DISABLED": "1"},
        {"POWERTOOLS_SERVICE_NAME": "db", "POWERTOOLS_LOG_DEDUPLICATION_DISABLED": "on"},
    ],
)
def test_no_warning_when_nothing_is_hidden(environ: dict[str, str]) -> None:
    assert _powertools.warn_if_hidden(environ) is None


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "0",
        "y",
        "n",
        "yes",
        "no",
        "t",
        "f",
        "true",
        "false",
        "on",
        "off",
        "TRUE",
        "Off",
        "",
        "2",
        "enabled",
        " true",
    ],
)
def test_deduplication_is_read_as_powertools_reads_it(value: str) -> None:
    from aws_lambda_powertools.shared.functions import strtobool

    try:
        powertools = strtobool(value)
    except ValueError:  # Powertools' Logger() raises: it adds no filter, nothing else works
        powertools = False
    environ = {"POWERTOOLS_LOG_DEDUPLICATION_DISABLED": value}
    assert _powertools.deduplication_disabled(environ) is powertools
